//! The whole platform as one library: the fleet of services in start order and
//! the router that serves them all. The `isp` binary and the cross-service tests in
//! `tests/` both build on it.

use anyhow::Context;
use axum::response::Redirect;
use axum::routing::get;
use axum::Router;
use isp_platform::runtime::{self, ServiceInfo, Shared, StartFn};

/// The fleet, in start order (core first: it creates the first Admin).
pub fn fleet() -> Vec<(ServiceInfo, StartFn)> {
    vec![
        (svc_core::INFO, |c| Box::pin(svc_core::start(c))),
        (svc_crm::INFO, |c| Box::pin(svc_crm::start(c))),
        (svc_billing::INFO, |c| Box::pin(svc_billing::start(c))),
        (svc_noc::INFO, |c| Box::pin(svc_noc::start(c))),
        (svc_support::INFO, |c| Box::pin(svc_support::start(c))),
        (svc_mpesa::INFO, |c| Box::pin(svc_mpesa::start(c))),
        (svc_notify::INFO, |c| Box::pin(svc_notify::start(c))),
        (svc_wa_parser::INFO, |c| Box::pin(svc_wa_parser::start(c))),
    ]
}

/// Builds the whole platform's router on `shared` (the launcher and the
/// cross-service tests both use this).
pub async fn build_fleet(shared: &Shared) -> anyhow::Result<Router> {
    let mut app = Router::new();
    let mut names = vec![];
    for (info, start) in fleet() {
        let ctx = runtime::context(info, shared)
            .await
            .with_context(|| format!("starting {}", info.name))?;
        app = app.merge(
            start(ctx)
                .await
                .with_context(|| format!("starting {}", info.name))?,
        );
        names.push(info.name);
    }
    Ok(app
        .merge(isp_platform::http::fleet_docs(&names))
        .route("/", get(|| async { Redirect::temporary("/docs") })))
}
