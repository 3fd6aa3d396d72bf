//! ISP Billing & Finance (SPEC 3.3, docs/contract.md#services).
//!
//! - [`collections`]: subscribers, invoices, payments, expenses and the daily-run
//!   log, with their field-level access and the hooks that keep the ledger right.
//! - `subscribers`: `POST /api/billing/subscribers` (CRM's lead conversion and
//!   walk-ins; creates the first invoice in the same transaction, honours
//!   `Idempotency-Key`) and the subscriber read/update routes.
//! - [`ledger`]: the money rules shared by the API and the M-Pesa consumer:
//!   applying a payment, reactivating a paid-up subscriber, status events.
//! - [`daily`]: the daily run (set-based SQL: invoices, overdue, suspensions) and
//!   its scheduler.
//! - [`storage`]: where expense receipts live (a trait; local folder by default).
//! - `consumers`: Core's `plan.*` (the local plans projection), NOC's
//!   provisioning events, M-Pesa's confirmed payments.
//!
//! The billing rules are written down in `docs/billing.md`.

use std::sync::Arc;

use axum::Router;
use isp_platform::collection;
use isp_platform::runtime::ServiceInfo;
use isp_platform::service::Service;
use isp_platform::ServiceContext;

pub mod collections;
mod consumers;
pub mod daily;
mod expenses;
pub mod ledger;
pub mod storage;
mod subscribers;
pub mod unallocated;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "billing",
    schema: "billing",
    extra_schemas: &[],
    port: 8083,
    scopes: &[],
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/billing");

/// Billing's collections, built once.
pub struct Collections {
    pub subscribers: Arc<collection::Collection>,
    pub invoices: Arc<collection::Collection>,
    pub payments: Arc<collection::Collection>,
    pub expenses: Arc<collection::Collection>,
    pub daily_runs: Arc<collection::Collection>,
    pub unallocated: Arc<collection::Collection>,
}

impl Collections {
    /// `store` holds expense receipts (removed once their expense's deletion commits).
    pub fn new(store: Arc<dyn storage::Storage>) -> Self {
        Self {
            subscribers: Arc::new(collections::subscribers()),
            invoices: Arc::new(collections::invoices()),
            payments: Arc::new(collections::payments()),
            expenses: Arc::new(collections::expenses(store)),
            daily_runs: Arc::new(collections::daily_runs()),
            unallocated: Arc::new(unallocated::collection()),
        }
    }
}

/// Migrates, starts the relay, the consumers and the daily-run scheduler, and
/// returns the service's router.
pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    // Settings first: a bad value stops the start before anything runs.
    start_with(ctx, Options::from_env()?).await
}

/// Billing's own settings (docs/billing.md, *Settings*).
const DEFAULT_PAYMENT_LANES: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub settings: daily::Settings,
    pub receipt_max_bytes: usize,
    pub schedule: daily::Schedule,
    /// M-Pesa payments recorded at once (`ISP_BILLING_PAYMENT_LANES`, default 4);
    /// one account's payments are still recorded one after the other.
    pub payment_lanes: usize,
}

impl Default for Options {
    /// What an empty environment gives.
    fn default() -> Self {
        Self {
            settings: daily::Settings::default(),
            receipt_max_bytes: expenses::DEFAULT_RECEIPT_MAX_BYTES,
            schedule: daily::Schedule {
                at: chrono::NaiveTime::from_hms_opt(0, 30, 0).expect("valid time"),
                enabled: true,
            },
            payment_lanes: DEFAULT_PAYMENT_LANES,
        }
    }
}

impl Options {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            settings: daily::Settings::from_env()?,
            receipt_max_bytes: expenses::receipt_max_bytes()?,
            schedule: daily::Schedule::from_env()?,
            payment_lanes: isp_platform::config::env_parse(
                "ISP_BILLING_PAYMENT_LANES",
                DEFAULT_PAYMENT_LANES,
            )?,
        })
    }
}

/// What Billing's custom routes share.
pub struct State {
    colls: Arc<Collections>,
    options: Options,
    store: Arc<dyn storage::Storage>,
}

type App = isp_platform::service::App<State>;

/// [`start`] with settings given rather than read from the environment (tests
/// start services with their own settings side by side in one process).
pub async fn start_with(ctx: Arc<ServiceContext>, options: Options) -> anyhow::Result<Router> {
    let svc = Service::new(
        ctx,
        &MIGRATOR,
        "ISP Billing & Finance: subscribers, invoices, payments, expenses, daily run",
    )
    .await?;
    let ctx = svc.ctx().clone();
    let store = storage::from_env(&ctx.config.data_dir)?;
    let colls = Arc::new(Collections::new(store.clone()));
    daily::spawn_scheduler(ctx.clone(), options.schedule, options.settings);
    let (receipt_max_bytes, payment_lanes) = (options.receipt_max_bytes, options.payment_lanes);
    Ok(svc
        .with(State {
            colls: colls.clone(),
            options,
            store,
        })
        .collection(&colls.subscribers)
        .collection(&colls.invoices)
        .collection(&colls.payments)
        .collection(&colls.expenses)
        .collection(&colls.daily_runs)
        .collection(&colls.unallocated)
        .routes(subscribers::routes())
        .routes(expenses::routes(receipt_max_bytes))
        .routes(daily::routes())
        .routes(unallocated::routes())
        .consume("billing-core", "isp.core.>", consumers::CoreEvents)
        .consume(
            "billing-noc",
            "isp.noc.>",
            consumers::NocEvents { ctx: ctx.clone() },
        )
        .consume_spec(
            isp_events::ConsumerSpec::new("billing-mpesa", "isp.mpesa.>")
                .lanes(payment_lanes, consumers::MpesaEvents::lane),
            consumers::MpesaEvents {
                ctx,
                payments: colls.payments.clone(),
            },
        )
        .router())
}
