//! Operations & NOC (docs/contract.md#noc): the technical backbone.
//!
//! - `collections`: subscribers (technical view: Billing's fields are a read-only
//!   projection, NOC owns connection type, RADIUS credentials, IP, MAC, router),
//!   resources (inventory; a Router is also a NAS), ipSubnets and ipAddresses
//!   (IPAM), workOrders (Technicians see and update only their own).
//! - `provision`: completing an installation order allocates a static IP under row
//!   locks and writes the FreeRADIUS account, in the order's transaction.
//! - `radius`: the rows we write into FreeRADIUS's own tables (schema `radius`).
//! - `dynauth`: RFC 5176 Disconnect/CoA requests, queued in the deciding
//!   transaction and sent by a background worker, answers recorded.
//! - `consumers`: Core plans/staff, CRM buildings, Billing subscribers and their
//!   status changes (suspension blocks RADIUS and disconnects).
//! - `zabbix`: the webhook that turns Zabbix problems into `network.*` events.
//! - `events`: `subscriber.network_updated` as NOC publishes it (with `at`).
//! - `secrets`: RADIUS passwords encrypted at rest.

use std::sync::Arc;

use axum::Router;
use isp_platform::collection::{self, Collection};
use isp_platform::runtime::ServiceInfo;
use isp_platform::ServiceContext;

pub mod collections;
mod consumers;
pub mod dynauth;
pub mod events;
mod provision;
pub mod radius;
pub mod secrets;
mod zabbix;

pub use consumers::username_from_account;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "noc",
    schema: "noc",
    extra_schemas: &["radius"],
    port: 8084,
    scopes: &[],
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/noc");

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    ctx.migrate_and_relay(&MIGRATOR).await?;
    // One stored ciphertext, if any, proves the key is the one in use.
    let stored: Option<String> =
        sqlx::query_scalar("SELECT radius_password FROM subscribers ORDER BY created_at LIMIT 1")
            .fetch_optional(&ctx.pool)
            .await?;
    let secrets = secrets::SecretBox::load_or_create(&ctx.config.data_dir, stored.as_deref())?;
    let zabbix_token = zabbix::load_token(&ctx.config.data_dir)?;
    let colls: Vec<Arc<Collection>> = vec![
        Arc::new(collections::subscribers(secrets.clone())),
        Arc::new(collections::resources()),
        Arc::new(collections::ip_subnets()),
        Arc::new(collections::ip_addresses()),
        Arc::new(collections::work_orders(secrets.clone())),
    ];
    ctx.consume("noc-core", "isp.core.>", consumers::CoreEvents);
    ctx.consume("noc-crm", "isp.crm.>", consumers::CrmEvents);
    ctx.consume(
        "noc-billing",
        "isp.billing.>",
        consumers::BillingEvents {
            secrets: secrets.clone(),
        },
    );
    dynauth::spawn_worker(
        ctx.pool.clone(),
        dynauth::Settings::from_env()?,
        ctx.shutdown.clone(),
    );

    let mut routes = Router::new().merge(zabbix::routes(ctx.clone(), zabbix_token));
    for c in &colls {
        routes = routes.merge(collection::routes(c.clone(), ctx.clone()));
    }
    let refs: Vec<&Collection> = colls.iter().map(|c| c.as_ref()).collect();
    let mut doc = isp_platform::openapi::collections_doc(
        "noc",
        "ISP Operations & NOC: subscribers, resources, IPAM, work orders",
        &refs,
    );
    doc.merge(zabbix::openapi());
    Ok(isp_platform::http::service_router(ctx, routes, doc))
}
