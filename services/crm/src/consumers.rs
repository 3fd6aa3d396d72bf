//! Projections CRM keeps from other services' events: Core's partners (to check
//! `referredBy` and a building's `partner`) and NOC's resources (a building's
//! read-only `equipment`). Each upsert compares the snapshot's `updatedAt`, so a
//! late, older snapshot never overwrites a newer one.

use isp_events::payloads::{
    entity_change, PartnerCreated, PartnerDeleted, PartnerSnapshot, PartnerUpdated,
    ResourceCreated, ResourceDeleted, ResourceSnapshot, ResourceUpdated,
};
use isp_events::{BoxFuture, CloudEvent, EventHandler};
use sqlx::PgConnection;
use uuid::Uuid;

/// `isp.core.>`, durable `crm-core`.
pub struct CoreEvents;

impl EventHandler for CoreEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match entity_change::<PartnerSnapshot, PartnerCreated, PartnerUpdated, PartnerDeleted>(
                ev,
            )? {
                Some((p, deleted)) => upsert_partner(tx, &p, deleted).await,
                None => Ok(()),
            }
        })
    }
}

async fn upsert_partner(
    tx: &mut PgConnection,
    p: &PartnerSnapshot,
    deleted: bool,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO partners (id, full_name, phone_number, status, deleted, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET full_name = EXCLUDED.full_name,
             phone_number = EXCLUDED.phone_number, status = EXCLUDED.status,
             deleted = EXCLUDED.deleted, updated_at = EXCLUDED.updated_at
         WHERE partners.updated_at <= EXCLUDED.updated_at AND NOT partners.deleted",
    )
    .bind(p.id)
    .bind(&p.full_name)
    .bind(&p.phone_number)
    .bind(&p.status)
    .bind(deleted)
    .bind(p.updated_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `isp.noc.>`, durable `crm-noc`.
pub struct NocEvents;

impl EventHandler for NocEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match entity_change::<
                ResourceSnapshot,
                ResourceCreated,
                ResourceUpdated,
                ResourceDeleted,
            >(ev)?
            {
                Some((r, deleted)) => upsert_resource(tx, &r, deleted).await,
                None => Ok(()),
            }
        })
    }
}

async fn upsert_resource(
    tx: &mut PgConnection,
    r: &ResourceSnapshot,
    deleted: bool,
) -> anyhow::Result<()> {
    let before: Option<Option<Uuid>> =
        sqlx::query_scalar("SELECT location FROM resources WHERE id = $1 FOR UPDATE")
            .bind(r.id)
            .fetch_optional(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO resources (id, resource_name, resource_type, status, location, deleted, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET resource_name = EXCLUDED.resource_name,
             resource_type = EXCLUDED.resource_type, status = EXCLUDED.status,
             location = EXCLUDED.location, deleted = EXCLUDED.deleted,
             updated_at = EXCLUDED.updated_at
         WHERE resources.updated_at <= EXCLUDED.updated_at AND NOT resources.deleted",
    )
    .bind(r.id)
    .bind(&r.resource_name)
    .bind(&r.resource_type)
    .bind(&r.status)
    .bind(r.location)
    .bind(deleted)
    .bind(r.updated_at)
    .execute(&mut *tx)
    .await?;
    // Recompute the lists of the building it left and the one it is in now (a
    // stale, ignored snapshot makes this a no-op).
    let touched: Vec<Uuid> = before.flatten().into_iter().chain(r.location).collect();
    if !touched.is_empty() {
        sqlx::query(
            "UPDATE buildings b SET equipment = ARRAY(
                 SELECT r.id FROM resources r WHERE r.location = b.id AND NOT r.deleted
                 ORDER BY r.resource_name, r.id)
             WHERE b.id = ANY($1)",
        )
        .bind(&touched)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
