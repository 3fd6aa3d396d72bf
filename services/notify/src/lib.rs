//! ISP Notifications (docs/contract.md#services): owns outbound SMS and email.
//!
//! - `requests`: consumes every service's `notification.requested.*` event; one
//!   delivery per request id, refused at once (Failed) for a bad recipient or a
//!   promotional message to a suppressed one.
//! - `worker`: per channel, claims due deliveries under a lease, sends them
//!   through the configured [`provider`] at its rate, retries transient failures
//!   with backoff and fails permanent ones at once.
//! - `store`: the state machine; a delivery only moves forwards and every move
//!   publishes `notification.status` through the outbox.
//! - `callbacks`: Africa's Talking delivery reports, opt-outs and inbound STOP
//!   (path token), Twilio status callbacks and inbound STOP (signature).
//! - `collections`: Admin's read-only list of deliveries.
//! - `settings`: `ISP_NOTIFY_*`.

use std::sync::Arc;

use axum::Router;
use isp_events::payloads::{NotificationChannel, NOTIFICATION_REQUEST_FILTER};
use isp_platform::runtime::ServiceInfo;
use isp_platform::ServiceContext;

pub mod callbacks;
pub mod collections;
pub mod provider;
pub mod requests;
pub mod settings;
pub mod store;
pub mod worker;

use provider::Provider;
pub use settings::{EmailProvider, Settings, SmsProvider};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "notify",
    schema: "notify",
    extra_schemas: &[],
    port: 8087,
    scopes: &[],
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/notify");

/// Starts Notify with settings from the environment.
pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    let settings = Settings::from_env(&ctx.config)?;
    start_with(ctx, settings).await
}

fn sms_provider(s: &Settings) -> Arc<dyn Provider> {
    let http = provider::http_client(s.request_timeout);
    match &s.sms {
        SmsProvider::Log => Arc::new(provider::log::LogProvider),
        SmsProvider::AfricasTalking(c) => Arc::new(provider::africastalking::AfricasTalking::new(
            c.clone(),
            http,
        )),
        SmsProvider::Twilio(c) => Arc::new(provider::twilio::Twilio::new(c.clone(), http)),
    }
}

fn email_provider(s: &Settings) -> anyhow::Result<Arc<dyn Provider>> {
    Ok(match &s.email {
        EmailProvider::Log => Arc::new(provider::log::LogProvider),
        EmailProvider::Smtp(c) => Arc::new(provider::smtp::Smtp::new(c.clone())?),
    })
}

/// Starts Notify with explicit settings (tests give each app its own).
pub async fn start_with(ctx: Arc<ServiceContext>, settings: Settings) -> anyhow::Result<Router> {
    settings.check()?;
    ctx.migrate_and_relay(&MIGRATOR).await?;
    let settings = Arc::new(settings);
    let sms = sms_provider(&settings);
    let email = email_provider(&settings)?;
    tracing::info!(sms = sms.name(), email = email.name(), "notify: providers");

    ctx.consume(
        requests::DURABLE,
        NOTIFICATION_REQUEST_FILTER,
        requests::Requests,
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    worker::spawn_listener(ctx.pool.clone(), wake.clone(), ctx.shutdown.clone());
    for (channel, provider, rate) in [
        (NotificationChannel::Sms, sms, settings.sms_rate_per_second),
        (
            NotificationChannel::Email,
            email,
            settings.email_rate_per_second,
        ),
    ] {
        worker::Worker {
            pool: ctx.pool.clone(),
            channel,
            provider,
            settings: settings.clone(),
            rate_per_second: rate,
            wake: wake.clone(),
        }
        .spawn(ctx.shutdown.clone());
    }

    let deliveries = Arc::new(collections::deliveries());
    let routes = Router::new()
        .merge(callbacks::routes(ctx.clone(), settings.clone()))
        .merge(isp_platform::collection::routes(
            deliveries.clone(),
            ctx.clone(),
        ));
    let mut doc = isp_platform::openapi::collections_doc(
        "notify",
        "ISP Notifications: SMS and email deliveries, gateway callbacks",
        &[deliveries.as_ref()],
    );
    doc.merge(callbacks::openapi());
    Ok(isp_platform::http::service_router(ctx, routes, doc))
}
