//! CRM & Sales (docs/contract.md#crm): buildings, building units and leads, and the lead's
//! conversion into a Billing subscriber.
//!
//! - [`collections`]: the three collections, their rules (partner checks, unique
//!   unit numbers, the lead pipeline, unit status following it) and their events
//!   (`building.*`, `lead.created`).
//! - `leads`: the leads API (with `Idempotency-Key` on create, for wa-parser) and
//!   `POST /api/crm/leads/{id}/convert`, which calls Billing synchronously and
//!   publishes `lead.converted` (Core counts the partner's referral once).
//! - [`intake`]: `POST /api/crm/intake/leads`, a partner's referral from wa-parser
//!   (the unit created when its number is new in the building).
//! - `consumers`: projections of Core's partners (`isp.core.>`, durable `crm-core`)
//!   and NOC's resources (`isp.noc.>`, durable `crm-noc`, a building's read-only
//!   `equipment`).

use std::sync::Arc;

use axum::Router;
use isp_platform::collection::{self, Collection};
use isp_platform::runtime::ServiceInfo;
use isp_platform::ServiceContext;

pub mod collections;
mod consumers;
pub mod intake;
mod leads;

pub use collections::{building_units, buildings, leads, transition_allowed};
pub use leads::{split_name, ConvertInput, BILLING_SCOPE, BILLING_SUBSCRIBERS, CONVERT_SCOPE};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "crm",
    schema: "crm",
    extra_schemas: &[],
    port: 8082,
    scopes: leads::BILLING_SCOPES,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/crm");

/// CRM's collections, built once.
pub struct Collections {
    pub buildings: Arc<Collection>,
    pub units: Arc<Collection>,
    pub leads: Arc<Collection>,
}

impl Collections {
    pub fn new() -> Self {
        Self {
            buildings: Arc::new(buildings()),
            units: Arc::new(building_units()),
            leads: Arc::new(leads()),
        }
    }
}

impl Default for Collections {
    fn default() -> Self {
        Self::new()
    }
}

/// Migrates, starts the outbox relay and the projections' consumers, and returns
/// the service's router.
pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    ctx.migrate_and_relay(&MIGRATOR).await?;
    ctx.consume("crm-core", "isp.core.>", consumers::CoreEvents);
    ctx.consume("crm-noc", "isp.noc.>", consumers::NocEvents);
    let colls = Collections::new();
    let routes = Router::new()
        .merge(collection::routes(colls.buildings.clone(), ctx.clone()))
        .merge(collection::routes(colls.units.clone(), ctx.clone()))
        .merge(leads::routes(ctx.clone(), colls.leads.clone()))
        .merge(intake::routes(ctx.clone(), colls.leads.clone()));
    let mut doc = isp_platform::openapi::collections_doc(
        "crm",
        "ISP CRM & Sales: buildings, building units, leads",
        &[&colls.buildings, &colls.units, &colls.leads],
    );
    doc.merge(leads::openapi());
    doc.merge(intake::openapi());
    Ok(isp_platform::http::service_router(ctx, routes, doc))
}
