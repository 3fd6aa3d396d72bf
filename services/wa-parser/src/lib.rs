//! ISP WhatsApp/SMS lead parser (docs/contract.md, SPEC 3.2, DESIGN.md flow 1, issue 10): partners
//! (caretakers) text a neighbour's details by WhatsApp or SMS; wa-parser turns
//! them into CRM leads and answers the partner on the channel they used.
//!
//! - [`webhooks`]: the WhatsApp Cloud API webhook (handshake, signed POSTs) and
//!   Africa's Talking's inbound SMS callback; each message stored once.
//! - [`worker`]: who sent it, [`parse`] (the message format), [`resolve`] (which
//!   building), the lead through CRM's intake operation, the reply.
//! - [`projections`]: Core's partners and CRM's buildings, from events.
//! - [`inbound`]: the `inboundMessages` log (read-only) and the Admin's
//!   re-process.
//! - [`settings`], the `ISP_WA_PARSER_*` variables read once at start.

use std::sync::Arc;

use axum::Router;
use isp_platform::auth::{HasKeys, Keys};
use isp_platform::collection::Collection;
use isp_platform::runtime::ServiceInfo;
use isp_platform::service::Service;
use isp_platform::ServiceContext;

pub mod inbound;
pub mod parse;
pub mod projections;
pub mod resolve;
pub mod settings;
pub mod webhooks;
pub mod worker;

pub use settings::Settings;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "wa-parser",
    schema: "wa_parser",
    extra_schemas: &[],
    port: 8088,
    scopes: &[worker::CRM_INTAKE_SCOPE],
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/wa_parser");

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub ctx: Arc<ServiceContext>,
    pub settings: Arc<Settings>,
    pub worker: Arc<worker::Worker>,
    pub coll: Arc<Collection>,
}

impl HasKeys for AppState {
    fn keys(&self) -> &Keys {
        &self.ctx.keys
    }
}

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    start_with(ctx, Settings::from_env()?).await
}

/// Start with explicit settings (tests give them per app, not through the
/// process environment they share).
pub async fn start_with(ctx: Arc<ServiceContext>, settings: Settings) -> anyhow::Result<Router> {
    let svc = Service::new(
        ctx,
        &MIGRATOR,
        "ISP WhatsApp/SMS lead parser: inbound messages, webhooks",
    )
    .await?;
    let ctx = svc.ctx().clone();
    settings.warn_on_dev_secrets();
    let worker = worker::Worker::new(ctx.clone(), settings.clone())?;
    worker.clone().spawn();
    let coll = Arc::new(inbound::collection());
    let state = AppState {
        ctx: ctx.clone(),
        settings: Arc::new(settings),
        worker,
        coll: coll.clone(),
    };
    let routes = Router::new()
        .merge(inbound::routes(state.clone()))
        .merge(webhooks::routes(state));
    // The inbound log is served read-only by `inbound`, so it is documented here
    // rather than through `Service::collection`.
    let mut doc = inbound::read_only(isp_platform::openapi::collections_doc(
        "wa-parser",
        "ISP WhatsApp/SMS lead parser: inbound messages, webhooks",
        &[&coll],
    ));
    doc.merge(webhooks::openapi());
    doc.merge(inbound::openapi());
    Ok(svc
        .merge(routes, doc)
        .consume("wa-parser-core", "isp.core.>", projections::CoreEvents)
        .consume("wa-parser-crm", "isp.crm.>", projections::CrmEvents)
        .router())
}
