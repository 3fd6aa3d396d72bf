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

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    /// `isp up`'s router: every service's API behind one address, and one Swagger
    /// UI at /docs listing all eight OpenAPI documents.
    #[tokio::test]
    async fn the_fleet_serves_every_api_and_one_docs_page_listing_them_all() {
        let app = isp_testkit::TestApp::spawn(&[]).await;
        let router = super::build_fleet(&app.shared).await.expect("fleet");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(isp_platform::http::serve(
            listener,
            router,
            app.shared.shutdown.clone(),
        ));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let root = http.get(format!("{base}/")).send().await.unwrap();
        assert!(root.status().is_redirection(), "{}", root.status());
        assert_eq!(root.headers()["location"], "/docs");
        let page = http.get(format!("{base}/docs/")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.text().await.unwrap().contains("swagger"));
        let init = http
            .get(format!("{base}/docs/swagger-initializer.js"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let names: Vec<&str> = super::fleet().iter().map(|(i, _)| i.name).collect();
        assert_eq!(names.len(), 8);
        for name in names {
            let url = format!("/api/{name}/openapi.json");
            assert!(init.contains(&url), "/docs does not list {url}: {init}");
            let spec = http.get(format!("{base}{url}")).send().await.unwrap();
            assert_eq!(spec.status(), StatusCode::OK, "{url}");
            let spec: serde_json::Value = spec.json().await.unwrap();
            assert!(spec["openapi"].is_string(), "{url}");
            let health = http
                .get(format!("{base}/api/{name}/health"))
                .send()
                .await
                .unwrap();
            assert_eq!(health.status(), StatusCode::OK, "{name} health");
        }
        let nf = http.get(format!("{base}/api/nowhere")).send().await.unwrap();
        assert_eq!(nf.status(), StatusCode::NOT_FOUND);
    }
}
