//! `isp-standin-sms`: the gateway stand-ins as a process, for `script/server`.
//!
//! `ISP_STANDIN_HTTP_ADDR` (default 127.0.0.1:54380: Africa's Talking and Twilio),
//! `ISP_STANDIN_SMTP_ADDR` (default 127.0.0.1:54325), `ISP_STANDIN_AT_CALLBACK`
//! (where delivery reports go), credentials as in `Options::default()` unless
//! `ISP_NOTIFY_AT_USERNAME` / `_AT_API_KEY` / `_TWILIO_ACCOUNT_SID` /
//! `_TWILIO_AUTH_TOKEN` say otherwise (the same variables Notify reads).

use isp_standin_sms::{Options, StandIns};

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let d = Options::default();
    let opts = Options {
        at_username: env("ISP_NOTIFY_AT_USERNAME").unwrap_or(d.at_username),
        at_api_key: env("ISP_NOTIFY_AT_API_KEY").unwrap_or(d.at_api_key),
        at_delivery_callback: env("ISP_STANDIN_AT_CALLBACK"),
        twilio_account_sid: env("ISP_NOTIFY_TWILIO_ACCOUNT_SID").unwrap_or(d.twilio_account_sid),
        twilio_auth_token: env("ISP_NOTIFY_TWILIO_AUTH_TOKEN").unwrap_or(d.twilio_auth_token),
        report_delay: std::time::Duration::from_millis(500),
        ..d
    };
    let http = env("ISP_STANDIN_HTTP_ADDR").unwrap_or_else(|| "127.0.0.1:54380".into());
    let smtp = env("ISP_STANDIN_SMTP_ADDR").unwrap_or_else(|| "127.0.0.1:54325".into());
    let s = StandIns::start_on(http.parse()?, smtp.parse()?, opts).await?;
    eprintln!(
        "gateway stand-ins: Africa's Talking and Twilio at {}, SMTP at {}",
        s.base_url, s.smtp_addr
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
