//! `isp`: the launcher. `isp up` runs all eight services in one process behind one
//! address (default http://127.0.0.1:8080) with one Swagger UI at `/docs`; each
//! service's own binary (`isp-core`, `isp-crm`, ...) runs it alone for a
//! distributed deployment. Both use the same code, schemas and NATS JetStream.

use anyhow::Context;
use isp::build_fleet;
use isp_platform::runtime::Shared;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage:
  isp up                          run every service in this process (ISP_HTTP_ADDR, default 127.0.0.1:8080)
  isp init <public-dir> <token-dir>
                                  for a distributed deployment, once per deploy: provision every
                                  service's Postgres role and schema (ISP_DATABASE_ADMIN_URL), make
                                  sure the signing key exists, write its public key to
                                  <public-dir>/jwt-ed25519.pub and each calling service's token to
                                  <token-dir>/<service>.token (see docs/operations.md)
  isp token <service> [scope...]  print a service token signed with the platform key
  isp public-key                  print the public key other hosts verify tokens with (ISP_JWT_PUBLIC_KEY)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("up") => up().await,
        Some("token") => {
            let service = args.get(1).context(USAGE)?;
            let cfg = isp_platform::config::PlatformConfig::from_env()?;
            let keys = isp_platform::auth::Keys::load_or_create(&cfg.data_dir)?;
            let scopes: Vec<&str> = args[2..].iter().map(String::as_str).collect();
            println!("{}", keys.service_token(service, &scopes)?);
            Ok(())
        }
        Some("init") => {
            let (Some(public), Some(tokens)) = (args.get(1), args.get(2)) else {
                anyhow::bail!("{USAGE}");
            };
            isp_platform::telemetry::init();
            let cfg = isp_platform::config::PlatformConfig::from_env()?;
            isp::init_deployment(&cfg, public.as_ref(), tokens.as_ref()).await
        }
        Some("public-key") => {
            let cfg = isp_platform::config::PlatformConfig::from_env()?;
            println!(
                "{}",
                isp_platform::auth::Keys::load_or_create(&cfg.data_dir)?.public_key_b64()
            );
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

async fn up() -> anyhow::Result<()> {
    isp_platform::telemetry::init();
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        isp_platform::telemetry::shutdown_signal().await;
        tracing::info!("shutting down");
        s.cancel();
    });
    let shared = Shared::from_env(shutdown.clone()).await?;
    let app = build_fleet(&shared).await?;
    let addr = isp_platform::config::env_or("ISP_HTTP_ADDR", "127.0.0.1:8080");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!("ISP platform listening on http://{addr} (API docs at http://{addr}/docs)");
    isp_platform::http::serve(listener, app, shutdown).await
}
