//! CRM & Sales (docs/contract.md#crm): buildings, building units and leads, and the lead's
//! conversion into a Billing subscriber.
//!
//! - [`collections`]: the three collections, their rules (partner checks, unique
//!   unit numbers, the lead pipeline, unit status following it) and their events
//!   (`building.*`, `lead.created`). Creating a lead honours `Idempotency-Key`
//!   (wa-parser retries it).
//! - `leads`: `POST /api/crm/leads/{id}/convert`, which calls Billing
//!   synchronously and publishes `lead.converted` (Core counts the partner's
//!   referral once).
//! - [`intake`]: `POST /api/crm/intake/leads`, a partner's referral from wa-parser
//!   (the unit created when its number is new in the building).
//! - `consumers`: projections of Core's partners (`isp.core.>`, durable `crm-core`)
//!   and NOC's resources (`isp.noc.>`, durable `crm-noc`, a building's read-only
//!   `equipment`).

use std::sync::Arc;

use axum::Router;
use isp_platform::collection::Collection;
use isp_platform::runtime::ServiceInfo;
use isp_platform::service::Service;
use isp_platform::ServiceContext;

pub mod collections;
mod consumers;
pub mod intake;
mod leads;

pub use collections::{building_units, buildings, leads, transition_allowed};
pub use leads::{split_name, ConvertInput, BILLING_SCOPE, BILLING_SUBSCRIBERS};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "crm",
    schema: "crm",
    extra_schemas: &[],
    port: 8082,
    scopes: leads::BILLING_SCOPES,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/crm");

/// Settings, read once at start: none of its own yet.
pub type Options = isp_platform::service::NoOptions;

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

/// What CRM's custom routes share.
pub struct State {
    colls: Arc<Collections>,
}

type App = isp_platform::service::App<State>;

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    start_with(ctx, Options::from_env()?).await
}

/// Migrates, starts the outbox relay and the projections' consumers, and returns
/// the service's router.
pub async fn start_with(ctx: Arc<ServiceContext>, _options: Options) -> anyhow::Result<Router> {
    let svc = Service::new(
        ctx,
        &MIGRATOR,
        "ISP CRM & Sales: buildings, building units, leads",
    )
    .await?;
    let svc_ctx = svc.ctx().clone();
    let colls = Arc::new(Collections::new());
    Ok(svc
        .with(State {
            colls: colls.clone(),
        })
        .collection(&colls.buildings)
        .collection(&colls.units)
        .collection(&colls.leads)
        .routes(leads::routes())
        .merge(
            intake::routes(svc_ctx.clone(), colls.leads.clone()),
            intake::openapi(),
        )
        .consume("crm-core", "isp.core.>", consumers::CoreEvents)
        .consume("crm-noc", "isp.noc.>", consumers::NocEvents)
        .router())
}
