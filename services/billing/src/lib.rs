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
//! - `routes`: the REST routes of invoices and expenses (the generic ones, with
//!   the lock order and the after-commit file deletion Billing needs).
//! - `consumers`: Core's `plan.*` (the local plans projection), NOC's
//!   provisioning events, M-Pesa's confirmed payments.
//!
//! The billing rules are written down in `docs/billing.md`.

use std::sync::Arc;

use axum::Router;
use isp_platform::collection;
use isp_platform::runtime::ServiceInfo;
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
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub settings: daily::Settings,
    pub receipt_max_bytes: usize,
    pub schedule: daily::Schedule,
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
        }
    }
}

impl Options {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            settings: daily::Settings::from_env()?,
            receipt_max_bytes: expenses::receipt_max_bytes()?,
            schedule: daily::Schedule::from_env()?,
        })
    }
}

/// [`start`] with settings given rather than read from the environment (tests
/// start services with their own settings side by side in one process).
pub async fn start_with(ctx: Arc<ServiceContext>, options: Options) -> anyhow::Result<Router> {
    let Options {
        settings,
        receipt_max_bytes,
        schedule,
    } = options;
    ctx.migrate_and_relay(&MIGRATOR).await?;
    let store = storage::from_env(&ctx.config.data_dir)?;
    let colls = Arc::new(Collections::new(store.clone()));

    ctx.consume("billing-core", "isp.core.>", consumers::CoreEvents);
    ctx.consume(
        "billing-noc",
        "isp.noc.>",
        consumers::NocEvents { ctx: ctx.clone() },
    );
    ctx.consume(
        "billing-mpesa",
        "isp.mpesa.>",
        consumers::MpesaEvents {
            ctx: ctx.clone(),
            payments: colls.payments.clone(),
        },
    );
    daily::spawn_scheduler(ctx.clone(), schedule, settings);

    let routes = Router::new()
        .merge(subscribers::routes(
            ctx.clone(),
            colls.subscribers.clone(),
            settings,
        ))
        .merge(collection::routes(colls.invoices.clone(), ctx.clone()))
        .merge(collection::routes(colls.payments.clone(), ctx.clone()))
        .merge(collection::routes(colls.expenses.clone(), ctx.clone()))
        .merge(collection::routes(colls.daily_runs.clone(), ctx.clone()))
        .merge(collection::routes(colls.unallocated.clone(), ctx.clone()))
        .merge(unallocated::routes(
            ctx.clone(),
            colls.unallocated.clone(),
            colls.payments.clone(),
        ))
        .merge(expenses::routes(
            ctx.clone(),
            colls.expenses.clone(),
            store,
            receipt_max_bytes,
        ))
        .merge(daily::routes(
            ctx.clone(),
            colls.daily_runs.clone(),
            settings,
        ));
    let mut doc = isp_platform::openapi::collections_doc(
        "billing",
        "ISP Billing & Finance: subscribers, invoices, payments, expenses, daily run",
        &[
            &colls.subscribers,
            &colls.invoices,
            &colls.payments,
            &colls.expenses,
            &colls.daily_runs,
            &colls.unallocated,
        ],
    );
    doc.merge(subscribers::openapi());
    doc.merge(expenses::openapi());
    doc.merge(daily::openapi());
    doc.merge(unallocated::openapi());
    Ok(isp_platform::http::service_router(ctx, routes, doc))
}
