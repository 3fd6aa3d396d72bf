//! ISP Notifications (docs/contract.md#services). Not built yet beyond the platform's
//! health, readiness, metrics, docs and event tables.

use std::sync::Arc;

use axum::Router;
use isp_platform::runtime::ServiceInfo;
use isp_platform::ServiceContext;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "notify",
    schema: "notify",
    extra_schemas: &[],
    port: 8087,
    scopes: &[],
};

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    isp_platform::runtime::start_bare(ctx, "ISP Notifications").await
}
