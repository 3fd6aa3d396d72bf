//! `daraja-standin`: the local Daraja `script/server` runs. Settings (all optional):
//! `DARAJA_STANDIN_ADDR` (default `127.0.0.1:8090`), `DARAJA_STANDIN_CONSUMER_KEY`,
//! `DARAJA_STANDIN_CONSUMER_SECRET`, `DARAJA_STANDIN_SHORTCODE`, `DARAJA_STANDIN_PASSKEY`,
//! `DARAJA_STANDIN_INITIATOR_NAME`, `DARAJA_STANDIN_INITIATOR_PASSWORD`,
//! `DARAJA_STANDIN_CALLBACK_DELAY_MS` (default 2000: time to "enter the PIN").

fn env(k: &str, d: String) -> String {
    std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or(d)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let d = daraja_standin::Config::default();
    let cfg = daraja_standin::Config {
        consumer_key: env("DARAJA_STANDIN_CONSUMER_KEY", d.consumer_key),
        consumer_secret: env("DARAJA_STANDIN_CONSUMER_SECRET", d.consumer_secret),
        shortcode: env("DARAJA_STANDIN_SHORTCODE", d.shortcode),
        passkey: env("DARAJA_STANDIN_PASSKEY", d.passkey),
        initiator_name: env("DARAJA_STANDIN_INITIATOR_NAME", d.initiator_name),
        initiator_password: env("DARAJA_STANDIN_INITIATOR_PASSWORD", d.initiator_password),
        callback_delay: std::time::Duration::from_millis(
            env("DARAJA_STANDIN_CALLBACK_DELAY_MS", "2000".into()).parse()?,
        ),
    };
    let addr = env("DARAJA_STANDIN_ADDR", "127.0.0.1:8090".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let s = daraja_standin::Standin::serve(listener, cfg).await?;
    tracing::info!(base = %s.base, "Daraja stand-in listening");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
