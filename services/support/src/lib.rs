//! Support & Communications (docs/contract.md#support): tickets, the communication log, contacts,
//! templates, automated notifications, manual and bulk messages, and tickets for
//! Zabbix problems.
//!
//! - [`collections`]: tickets (Customer and Network kinds, the status workflow),
//!   messages (read-only log), contacts, messageTemplates, notificationTriggers,
//!   suppressions and the read-only subscriber projection.
//! - `templates`: minijinja rendering and the variables of each trigger.
//! - `consumers`: projections of Core, CRM, Billing and NOC; Notify's delivery
//!   reports and opt-outs; the events that notify customers.
//! - `network`: one High ticket per Zabbix problem, notes from updates, resolution
//!   on recovery.
//! - `notifications`: the message log and Notify's requests (one transaction).
//! - `api`: contact CSV import, a ticket's messages and manual replies.
//! - `bulk`: bulk sends (audience, dry run, schedule, cancel, progress, quiet hours).

use std::sync::Arc;

use axum::Router;
use isp_platform::collection::{self, Collection};
use isp_platform::runtime::ServiceInfo;
use isp_platform::ServiceContext;

mod api;
mod bulk;
pub mod collections;
mod consumers;
pub mod network;
pub mod notifications;
pub mod templates;

pub use collections::transition_allowed;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "support",
    schema: "support",
    extra_schemas: &[],
    port: 8085,
    scopes: &[],
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/support");

/// Support's settings (environment variables, see the README).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ISP_SUPPORT_RESOLVE_ON_RECOVERY` (default true): a Zabbix recovery resolves
    /// the problem's ticket, not only notes it.
    pub resolve_on_recovery: bool,
    /// `ISP_SUPPORT_OPT_OUT_FOOTER`: appended to every promotional message.
    pub opt_out_footer: String,
    /// `ISP_SUPPORT_PROMOTIONAL_HOURS` (default `8-18`): the hours of the day, East
    /// Africa Time, in which promotional sends may start.
    pub promotional_hours: (u32, u32),
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let resolve_on_recovery =
            match isp_platform::config::env_opt("ISP_SUPPORT_RESOLVE_ON_RECOVERY").as_deref() {
                None | Some("true") | Some("1") => true,
                Some("false") | Some("0") => false,
                Some(v) => anyhow::bail!("ISP_SUPPORT_RESOLVE_ON_RECOVERY={v}: use true or false"),
            };
        let hours = isp_platform::config::env_or("ISP_SUPPORT_PROMOTIONAL_HOURS", "8-18");
        let promotional_hours = hours
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            .filter(|(a, b): &(u32, u32)| a < b && *b <= 24)
            .ok_or_else(|| {
                anyhow::anyhow!("ISP_SUPPORT_PROMOTIONAL_HOURS={hours}: use <from>-<to>, e.g. 8-18")
            })?;
        Ok(Self {
            resolve_on_recovery,
            promotional_hours,
            opt_out_footer: isp_platform::config::env_or(
                "ISP_SUPPORT_OPT_OUT_FOOTER",
                "STOP*456*9*5#",
            ),
        })
    }
}

/// Support's collections, built once.
pub struct Collections {
    pub tickets: Arc<Collection>,
    pub messages: Arc<Collection>,
    pub contacts: Arc<Collection>,
    pub templates: Arc<Collection>,
    pub triggers: Arc<Collection>,
    pub suppressions: Arc<Collection>,
    pub subscribers: Arc<Collection>,
}

impl Collections {
    pub fn new() -> Self {
        Self {
            tickets: Arc::new(collections::tickets()),
            messages: Arc::new(collections::messages()),
            contacts: Arc::new(collections::contacts()),
            templates: Arc::new(collections::message_templates()),
            triggers: Arc::new(collections::notification_triggers()),
            suppressions: Arc::new(collections::suppressions()),
            subscribers: Arc::new(collections::subscribers()),
        }
    }
    fn all(&self) -> [&Arc<Collection>; 7] {
        [
            &self.tickets,
            &self.messages,
            &self.contacts,
            &self.templates,
            &self.triggers,
            &self.suppressions,
            &self.subscribers,
        ]
    }
}

impl Default for Collections {
    fn default() -> Self {
        Self::new()
    }
}

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    start_with(ctx, Settings::from_env()?).await
}

/// [`start`] with settings given (tests pass their own instead of the environment).
pub async fn start_with(ctx: Arc<ServiceContext>, settings: Settings) -> anyhow::Result<Router> {
    ctx.migrate_and_relay(&MIGRATOR).await?;
    let colls = Arc::new(Collections::new());
    let notifier = Arc::new(notifications::Notifier {
        timezone: ctx.config.timezone,
    });
    ctx.consume("support-core", "isp.core.>", consumers::CoreEvents);
    ctx.consume("support-crm", "isp.crm.>", consumers::CrmEvents);
    ctx.consume(
        "support-billing",
        "isp.billing.>",
        consumers::BillingEvents {
            notifier: notifier.clone(),
        },
    );
    ctx.consume(
        "support-noc",
        "isp.noc.>",
        consumers::NocEvents {
            network: network::NetworkSettings {
                resolve_on_recovery: settings.resolve_on_recovery,
                timezone: ctx.config.timezone,
                tickets: colls.tickets.clone(),
            },
        },
    );
    ctx.consume(
        "support-tickets",
        "isp.support.ticket.>",
        consumers::TicketEvents { notifier },
    );
    ctx.consume("support-notify", "isp.notify.>", consumers::NotifyEvents);
    let bulk = bulk::Bulk::start(ctx.clone(), colls.clone(), settings.clone());

    let mut routes = Router::new()
        .merge(api::routes(ctx.clone(), colls.clone()))
        .merge(bulk::routes(bulk));
    for c in colls.all() {
        let read_only = Arc::ptr_eq(c, &colls.messages) || Arc::ptr_eq(c, &colls.subscribers);
        routes = routes.merge(if read_only {
            api::read_only_routes(ctx.clone(), c.clone())
        } else {
            collection::routes(c.clone(), ctx.clone())
        });
    }
    let refs: Vec<&Collection> = colls.all().into_iter().map(|c| c.as_ref()).collect();
    let mut doc = isp_platform::openapi::collections_doc(
        "support",
        "ISP Support & Communications: tickets, messages, contacts, templates, bulk sends",
        &refs,
    );
    for c in &refs {
        api::drop_forbidden_operations(&mut doc, "support", c);
    }
    doc.merge(api::openapi());
    doc.merge(bulk::openapi());
    Ok(isp_platform::http::service_router(ctx, routes, doc))
}
