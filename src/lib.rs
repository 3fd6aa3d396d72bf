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

/// `isp init`: what a distributed deployment does once before the services start,
/// so that no service needs the superuser's password or the signing key. With the
/// superuser URL (`ISP_DATABASE_ADMIN_URL`) it provisions every service's role and
/// schema (and FreeRADIUS's reader role); it loads or creates the signing key in
/// `ISP_DATA_DIR` (which only core and this job may see), writes the public key to
/// `<public_dir>/jwt-ed25519.pub` for the services to verify with
/// (`ISP_JWT_PUBLIC_KEY_FILE`), and mints each service that calls others a token
/// limited to its declared scopes into `<token_dir>/<service>.token`
/// (`ISP_<SCHEMA>_SERVICE_TOKEN_FILE`).
pub async fn init_deployment(
    cfg: &isp_platform::config::PlatformConfig,
    public_dir: &std::path::Path,
    token_dir: &std::path::Path,
) -> anyhow::Result<()> {
    if let Some(admin) = &cfg.database_admin_url {
        let dbs: Vec<_> = fleet().iter().map(|(info, _)| info.db()).collect();
        isp_platform::db::provision(admin, &dbs, &[runtime::radius_reader()])
            .await
            .context("provisioning the services' roles and schemas")?;
        tracing::info!(
            services = dbs.len(),
            "database roles and schemas provisioned"
        );
    }
    let keys = isp_platform::auth::Keys::load_or_create(&cfg.data_dir)?;
    anyhow::ensure!(
        keys.can_sign(),
        "isp init needs the signing key (ISP_JWT_PRIVATE_KEY[_FILE] or ISP_DATA_DIR), not a public key"
    );
    std::fs::create_dir_all(public_dir)?;
    std::fs::write(
        public_dir.join("jwt-ed25519.pub"),
        format!("{}\n", keys.public_key_b64()),
    )?;
    std::fs::create_dir_all(token_dir)?;
    for (info, _) in fleet() {
        if info.scopes.is_empty() {
            continue;
        }
        let token = keys.service_token(info.name, info.scopes)?;
        write_secret(&token_dir.join(format!("{}.token", info.name)), &token)?;
    }
    tracing::info!("deployment initialised");
    Ok(())
}

fn write_secret(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
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
        let nf = http
            .get(format!("{base}/api/nowhere"))
            .send()
            .await
            .unwrap();
        assert_eq!(nf.status(), StatusCode::NOT_FOUND);
    }

    /// `isp init` provisions every role, so services then start without the
    /// superuser URL, and hands out the public key and scoped service tokens.
    #[tokio::test]
    async fn init_provisions_roles_and_writes_the_public_key_and_service_tokens() {
        let app = isp_testkit::TestApp::spawn(&[]).await;
        let cfg = app.shared.config.clone();
        let out = cfg.data_dir.join("out");
        super::init_deployment(&cfg, &out.join("public"), &out.join("tokens"))
            .await
            .expect("init");
        let public = std::fs::read_to_string(out.join("public/jwt-ed25519.pub")).unwrap();
        let verifier = isp_platform::auth::Keys::load_or_create(&cfg.data_dir).unwrap();
        assert_eq!(public.trim(), verifier.public_key_b64());
        let token_file = out.join("tokens/crm.token");
        let token = std::fs::read_to_string(&token_file).unwrap();
        let claims = verifier.verify(token.trim()).expect("crm token verifies");
        assert_eq!(claims.sub, "service:crm");
        assert_eq!(claims.scopes, svc_crm::INFO.scopes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "token readable by others: {mode:o}");
        }
        // Only services that call others get a token.
        assert!(!out.join("tokens/core.token").exists());
        // A second run (every deploy) is harmless.
        super::init_deployment(&cfg, &out.join("public"), &out.join("tokens"))
            .await
            .expect("init again");
        // Every service's role exists: a service starts without the superuser URL.
        let mut no_admin = app.shared.clone();
        no_admin.config.database_admin_url = None;
        for (info, _) in super::fleet() {
            let ctx = isp_platform::runtime::context(info, &no_admin)
                .await
                .unwrap_or_else(|e| panic!("{}: {e:?}", info.name));
            let schema: String = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&ctx.pool)
                .await
                .unwrap();
            assert_eq!(schema, info.schema);
        }
        let radius: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'isp_radius')",
        )
        .fetch_one(&app.admin_pool().await)
        .await
        .unwrap();
        assert!(radius);
    }
}
