//! Core & Company (docs/contract.md#core): staff (the auth collection), service plans and
//! partners. Core is the only service holding the JWT signing key; it publishes
//! `plan.*`, `partner.*` and `staff.*` so other services keep projections, and
//! consumes `lead.converted` to count each partner's referrals exactly once.

use std::sync::Arc;

use axum::Router;
use isp_platform::collection::{self, Collection};
use isp_platform::runtime::ServiceInfo;
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

/// Migrates, creates the first Admin if there is no staff yet, starts the outbox
/// relay and the consumers, and returns the service's router.
pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    ctx.migrate_and_relay(&MIGRATOR).await?;
    let colls = Arc::new(Collections::new());
    bootstrap::ensure_admin(&ctx, &colls.staff).await?;
    ctx.consume(
        "core-crm",
        "isp.crm.>",
        consumers::CrmEvents {
            partners: colls.partners.clone(),
        },
    );
    ctx.consume("core-noc", "isp.noc.>", consumers::NocEvents);

    let auth_settings = auth::Settings::from_env()?;
    let routes = Router::new()
        .merge(auth::routes(
            ctx.clone(),
            colls.staff.clone(),
            auth_settings,
        ))
        .merge(collection::routes(colls.staff.clone(), ctx.clone()))
        .merge(collection::routes(colls.plans.clone(), ctx.clone()))
        .merge(collection::routes(colls.partners.clone(), ctx.clone()));
    let mut doc = isp_platform::openapi::collections_doc(
        "core",
        "ISP Core: staff, plans, partners",
        &[&colls.staff, &colls.plans, &colls.partners],
    );
    doc.merge(auth::openapi());
    Ok(isp_platform::http::service_router(ctx, routes, doc))
}
