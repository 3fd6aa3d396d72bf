//! Projections CRM keeps from other services' events: Core's partners (to check
//! `referredBy` and a building's `partner`) and NOC's resources (a building's
//! read-only `equipment`). Both write through [`Projection`], so a late, older
//! snapshot never overwrites a newer one and nothing brings back a deleted one.

use isp_events::payloads::{PartnerSnapshot, ResourceSnapshot};
use isp_events::{entity_change, Change, CloudEvent, EventHandler, Projection};
use sqlx::PgConnection;
use uuid::Uuid;

const PARTNERS: Projection = Projection::new("partners", &["full_name", "phone_number", "status"]);

const RESOURCES: Projection = Projection::new(
    "resources",
    &["resource_name", "resource_type", "status", "location"],
);

/// `isp.core.>`, durable `crm-core`.
pub struct CoreEvents;

impl EventHandler for CoreEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(p) = entity_change::<PartnerSnapshot>(ev)? {
            PARTNERS
                .upsert(tx, &p, |row, p| {
                    row.bind(&p.full_name).bind(&p.phone_number).bind(p.status);
                })
                .await?;
        }
        Ok(())
    }
}

/// `isp.noc.>`, durable `crm-noc`.
pub struct NocEvents;

impl EventHandler for NocEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        match entity_change::<ResourceSnapshot>(ev)? {
            Some(r) => upsert_resource(tx, &r).await,
            None => Ok(()),
        }
    }
}

async fn upsert_resource(
    tx: &mut PgConnection,
    r: &Change<ResourceSnapshot>,
) -> anyhow::Result<()> {
    let before: Option<Option<Uuid>> =
        sqlx::query_scalar("SELECT location FROM resources WHERE id = $1 FOR UPDATE")
            .bind(r.id)
            .fetch_optional(&mut *tx)
            .await?;
    let applied = RESOURCES
        .upsert(tx, r, |row, r| {
            row.bind(&r.resource_name)
                .bind(r.resource_type)
                .bind(r.status)
                .bind(r.location);
        })
        .await?;
    if !applied {
        return Ok(());
    }
    // Recompute the lists of the building it left and the one it is in now.
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
