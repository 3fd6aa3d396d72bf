//! Projections wa-parser keeps from other services' events: Core's partners (who
//! may send, by number) and CRM's buildings (which partner looks after which
//! building). Both write through [`Projection`] (a late, older snapshot never
//! overwrites a newer one and nothing brings back a deleted one); a fresh schema's
//! consumers start from the beginning of the stream, so both converge from history.

use isp_events::payloads::{BuildingSnapshot, PartnerSnapshot};
use isp_events::{entity_change, CloudEvent, EventHandler, Projection};
use sqlx::PgConnection;

const PARTNERS: Projection = Projection::new("partners", &["full_name", "phone_number", "status"]);

const BUILDINGS: Projection = Projection::new("buildings", &["name", "partner"]);

/// `isp.core.>`, durable `wa-parser-core`.
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

/// `isp.crm.>`, durable `wa-parser-crm`.
pub struct CrmEvents;

impl EventHandler for CrmEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(b) = entity_change::<BuildingSnapshot>(ev)? {
            BUILDINGS
                .upsert(tx, &b, |row, b| {
                    row.bind(&b.name).bind(b.partner);
                })
                .await?;
        }
        Ok(())
    }
}
