//! ISP Support & Communications (docs/contract.md#services). Not built yet beyond the platform's
//! health, readiness, metrics, docs and event tables.

use std::sync::Arc;

use axum::Router;
use isp_platform::runtime::ServiceInfo;
use isp_platform::ServiceContext;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "support",
    schema: "support",
    extra_schemas: &[],
    port: 8085,
    scopes: &[],
};

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    isp_platform::runtime::start_bare(ctx, "ISP Support & Communications").await
}
