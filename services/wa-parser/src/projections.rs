//! Projections wa-parser keeps from other services' events: Core's partners (who
//! may send, by number) and CRM's buildings (which partner looks after which
//! building). Each upsert compares the snapshot's `updatedAt`, so a late, older
//! snapshot never overwrites a newer one; a fresh schema's consumers start from
//! the beginning of the stream, so both converge from history.

use isp_events::payloads::{
    entity_change, BuildingCreated, BuildingDeleted, BuildingSnapshot, BuildingUpdated,
    PartnerCreated, PartnerDeleted, PartnerSnapshot, PartnerUpdated,
};
use isp_events::{BoxFuture, CloudEvent, EventHandler};
use sqlx::PgConnection;

/// `isp.core.>`, durable `wa-parser-core`.
pub struct CoreEvents;

impl EventHandler for CoreEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let Some((p, deleted)) =
                entity_change::<PartnerSnapshot, PartnerCreated, PartnerUpdated, PartnerDeleted>(ev)?
            else {
                return Ok(());
            };
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
        })
    }
}

/// `isp.crm.>`, durable `wa-parser-crm`.
pub struct CrmEvents;

impl EventHandler for CrmEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let Some((b, deleted)) = entity_change::<
                BuildingSnapshot,
                BuildingCreated,
                BuildingUpdated,
                BuildingDeleted,
            >(ev)?
            else {
                return Ok(());
            };
            sqlx::query(
                "INSERT INTO buildings (id, name, partner, deleted, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, partner = EXCLUDED.partner,
                     deleted = EXCLUDED.deleted, updated_at = EXCLUDED.updated_at
                 WHERE buildings.updated_at <= EXCLUDED.updated_at AND NOT buildings.deleted",
            )
            .bind(b.id)
            .bind(&b.name)
            .bind(b.partner)
            .bind(deleted)
            .bind(b.updated_at)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }
}
