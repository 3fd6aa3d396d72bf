//! Core & Company (docs/contract.md#core): staff (the auth collection), service plans and
//! partners. Core is the only service holding the JWT signing key; it publishes
//! `plan.*`, `partner.*` and `staff.*` so other services keep projections, and
//! consumes `lead.converted` to count each partner's referrals exactly once.

use std::sync::Arc;

use axum::Router;
use isp_platform::collection::Collection;
use isp_platform::runtime::ServiceInfo;
use isp_platform::service::Service;
use isp_platform::ServiceContext;

mod auth;
mod bootstrap;
mod collections;
mod consumers;

pub use collections::{partners, plans, staff};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "core",
    schema: "core",
    extra_schemas: &[],
    port: 8081,
    scopes: &[],
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/core");

/// Core's settings, read once at start.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub auth: auth::Settings,
}

impl Options {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            auth: auth::Settings::from_env()?,
        })
    }
}

/// Core's collections, built once.
pub struct Collections {
    pub staff: Arc<Collection>,
    pub plans: Arc<Collection>,
    pub partners: Arc<Collection>,
}

impl Collections {
    pub fn new() -> Self {
        Self {
            staff: Arc::new(staff()),
            plans: Arc::new(plans()),
            partners: Arc::new(partners()),
        }
    }
}

impl Default for Collections {
    fn default() -> Self {
        Self::new()
    }
}

/// What core's custom routes share.
pub struct State {
    colls: Arc<Collections>,
    auth: auth::Settings,
}

type App = isp_platform::service::App<State>;

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    // Settings first: a bad value stops the start before anything runs.
    start_with(ctx, Options::from_env()?).await
}

/// Migrates, creates the first Admin if there is no staff yet, starts the relay
/// and the consumers, and returns the service's router.
pub async fn start_with(ctx: Arc<ServiceContext>, options: Options) -> anyhow::Result<Router> {
    let svc = Service::new(ctx, &MIGRATOR, "ISP Core: staff, plans, partners").await?;
    let colls = Arc::new(Collections::new());
    bootstrap::ensure_admin(svc.ctx(), &colls.staff).await?;
    let partners = colls.partners.clone();
    Ok(svc
        .with(State {
            colls: colls.clone(),
            auth: options.auth,
        })
        .collection(&colls.staff)
        .collection(&colls.plans)
        .collection(&colls.partners)
        .routes(auth::routes())
        .consume("core-crm", "isp.crm.>", consumers::CrmEvents { partners })
        .consume("core-noc", "isp.noc.>", consumers::NocEvents)
        .router())
}
