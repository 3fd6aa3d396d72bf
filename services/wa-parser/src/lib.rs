//! ISP WhatsApp/SMS lead parser (docs/contract.md#services). Not built yet beyond the platform's
//! health, readiness, metrics, docs and event tables.

use std::sync::Arc;

use axum::Router;
use isp_platform::runtime::ServiceInfo;
use isp_platform::service::Service;
use isp_platform::ServiceContext;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "wa-parser",
    schema: "wa_parser",
    extra_schemas: &[],
    port: 8088,
    scopes: &[],
};

/// Migrations of its own: none yet (the shared event tables only).
pub static MIGRATOR: &sqlx::migrate::Migrator = &isp_platform::runtime::NO_MIGRATIONS;

/// Settings, read once at start: none of its own yet.
pub type Options = isp_platform::service::NoOptions;

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    start_with(ctx, Options::from_env()?).await
}

/// Migrates, starts the relay, and returns the router (health, readiness,
/// metrics, docs). Collections, custom routes and consumers are added to the
/// builder here, as in core, crm, billing and noc.
pub async fn start_with(ctx: Arc<ServiceContext>, _options: Options) -> anyhow::Result<Router> {
    Ok(Service::new(ctx, MIGRATOR, "ISP WhatsApp/SMS lead parser")
        .await?
        .router())
}
