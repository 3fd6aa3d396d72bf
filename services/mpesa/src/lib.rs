//! ISP M-Pesa (docs/contract.md#services): money in and out through Safaricom Daraja.
//!
//! - [`daraja`]: the whole Daraja wire format and the client (shared OAuth token,
//!   STK push and query, C2B registration, Pull Transactions, B2C, status).
//! - `stk`: `POST /api/mpesa/stk-push`, the STK callback, and the query that
//!   settles prompts whose callback never came.
//! - `c2b`: paybill validation and confirmation, URL registration, and Pull
//!   Transactions on a schedule for confirmations that were lost.
//! - `credit`: one credit per M-Pesa receipt, whatever path it came by; the
//!   credit's insert publishes `mpesa.payment.confirmed` through the outbox.
//! - `hooks`: the public callback routes under `/hooks/daraja/<token>/...`
//!   (Safaricom refuses URLs containing M-Pesa, so they cannot live under
//!   `/api/mpesa`); the path token is checked before a body is read.
//! - `projections`: Billing's subscribers, invoices and payments from events, so
//!   a prompt is priced without calling Billing.
//! - `collections`: the read-only lists staff see (transactions, STK requests,
//!   payments, commissions).
//! - `commissions`: partner commissions for converted referrals, approved by
//!   Admin (or automatically up to an amount) and paid by B2C, settled by the
//!   result callback or Transaction Status; a paid one publishes
//!   `mpesa.commission.paid` (Billing records the expense).
//! - `reconciliation`: receipts matched and unallocated, commissions paid, for
//!   a date range.
//!
//! Settings (`ISP_MPESA_*`) are listed in `services/mpesa/README.md`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use isp_platform::config::{env_opt, env_or, env_parse};
use isp_platform::runtime::ServiceInfo;
use isp_platform::service::Service;
use isp_platform::ServiceContext;

mod c2b;
mod collections;
pub mod commissions;
mod credit;
pub mod daraja;
mod hooks;
mod projections;
mod reconciliation;
pub mod status;
mod stk;
mod txlog;

pub use stk::AutoStk;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "mpesa",
    schema: "mpesa",
    extra_schemas: &[],
    port: 8086,
    scopes: &[],
};

const TITLE: &str = "ISP M-Pesa: STK push, C2B paybill and the Daraja transaction log";

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/mpesa");

/// The M-Pesa service's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub daraja: daraja::DarajaConfig,
    /// `ISP_MPESA_CALLBACK_TOKEN`: the secret path segment of every callback URL;
    /// when unset, one is generated once and kept in the schema.
    pub callback_token: Option<String>,
    /// `ISP_MPESA_CALLBACK_BASE_URL` (default `ISP_PUBLIC_URL`): how Daraja reaches us.
    pub callback_base_url: Option<String>,
    /// `ISP_MPESA_STK_QUERY_AFTER_SECONDS` (60): an STK prompt without a callback
    /// this long is settled with the STK query (then again with back-off).
    pub stk_query_after: Duration,
    /// `ISP_MPESA_C2B_ACCEPT_ALL` (false): validation accepts any account number
    /// (Billing keeps unknown ones as unallocated payments).
    pub c2b_accept_all: bool,
    /// `ISP_MPESA_C2B_REGISTER_AT_START` (true): register the C2B URLs at start.
    pub c2b_register_at_start: bool,
    /// `ISP_MPESA_PULL_INTERVAL_SECONDS` (900; 0 = never): Pull Transactions of
    /// the last 48 hours, crediting receipts not yet seen.
    pub pull_interval: Option<Duration>,
    /// `ISP_MPESA_COMMISSION_BASIS` (`flat`) and
    /// `ISP_MPESA_COMMISSION_AUTO_APPROVE_UP_TO` (unset: never).
    pub commissions: commissions::Rules,
    /// `ISP_MPESA_B2C_STATUS_AFTER_SECONDS` (120): a Sent commission without a
    /// result this long is asked about with Transaction Status (then with back-off).
    pub b2c_status_after: Duration,
    /// `ISP_MPESA_AUTO_STK` (`off`): STK prompts sent automatically when an
    /// invoice is created and/or becomes overdue (`created`, `overdue`, or both
    /// comma-separated), once per invoice per trigger.
    pub auto_stk: AutoStk,
    /// How often the workers look for due work.
    pub tick: Duration,
}

impl Options {
    pub fn from_env() -> anyhow::Result<Self> {
        let shortcode = env_or("ISP_MPESA_SHORTCODE", "174379");
        let certificate_pem = match env_opt("ISP_MPESA_CERTIFICATE_FILE") {
            Some(f) => Some(
                std::fs::read_to_string(&f)
                    .map_err(|e| anyhow::anyhow!("ISP_MPESA_CERTIFICATE_FILE={f}: {e}"))?,
            ),
            None => env_opt("ISP_MPESA_CERTIFICATE"),
        };
        let pull: u64 = env_parse("ISP_MPESA_PULL_INTERVAL_SECONDS", 900)?;
        Ok(Self {
            daraja: daraja::DarajaConfig {
                base_url: env_or("ISP_MPESA_DARAJA_URL", "http://127.0.0.1:8090")
                    .trim_end_matches('/')
                    .to_string(),
                consumer_key: env_or("ISP_MPESA_CONSUMER_KEY", "standin-consumer-key"),
                consumer_secret: env_or("ISP_MPESA_CONSUMER_SECRET", "standin-consumer-secret"),
                party_b: env_or("ISP_MPESA_PARTY_B", &shortcode),
                b2c_shortcode: env_or("ISP_MPESA_B2C_SHORTCODE", &shortcode),
                shortcode,
                passkey: env_or(
                    "ISP_MPESA_PASSKEY",
                    "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919",
                ),
                transaction_type: env_or("ISP_MPESA_TRANSACTION_TYPE", "CustomerPayBillOnline"),
                initiator_name: env_or("ISP_MPESA_INITIATOR_NAME", "testapi"),
                initiator_password: env_or("ISP_MPESA_INITIATOR_PASSWORD", "Safaricom123!!"),
                certificate_pem,
                timeout: Duration::from_secs(env_parse("ISP_MPESA_HTTP_TIMEOUT_SECONDS", 30)?),
            },
            callback_token: env_opt("ISP_MPESA_CALLBACK_TOKEN"),
            callback_base_url: env_opt("ISP_MPESA_CALLBACK_BASE_URL"),
            stk_query_after: Duration::from_secs(env_parse(
                "ISP_MPESA_STK_QUERY_AFTER_SECONDS",
                60,
            )?),
            c2b_accept_all: env_parse("ISP_MPESA_C2B_ACCEPT_ALL", false)?,
            c2b_register_at_start: env_parse("ISP_MPESA_C2B_REGISTER_AT_START", true)?,
            pull_interval: (pull > 0).then(|| Duration::from_secs(pull)),
            commissions: commissions::Rules {
                basis: commissions::Basis::parse(&env_or("ISP_MPESA_COMMISSION_BASIS", "flat"))?,
                auto_approve_up_to: match env_opt("ISP_MPESA_COMMISSION_AUTO_APPROVE_UP_TO") {
                    None => None,
                    Some(v) => Some(v.trim().parse::<rust_decimal::Decimal>().map_err(|_| {
                        anyhow::anyhow!(
                            "ISP_MPESA_COMMISSION_AUTO_APPROVE_UP_TO must be an amount in KES, not {v:?}"
                        )
                    })?),
                },
            },
            b2c_status_after: Duration::from_secs(env_parse(
                "ISP_MPESA_B2C_STATUS_AFTER_SECONDS",
                120,
            )?),
            auto_stk: AutoStk::parse(&env_or("ISP_MPESA_AUTO_STK", "off"))?,
            tick: Duration::from_secs(1),
        })
    }
}

/// What the handlers and workers share.
pub(crate) struct Mpesa {
    pub ctx: Arc<ServiceContext>,
    pub daraja: daraja::Daraja,
    pub opts: Options,
    /// `<base>/hooks/daraja/<token>`
    pub hook_base: String,
    pub token: String,
    /// Wakes the Pull Transactions worker (an STK query found a payment whose
    /// receipt only Pull Transactions can tell).
    pub pull_now: tokio::sync::Notify,
}

impl Mpesa {
    pub fn hook(&self, path: &str) -> String {
        format!("{}/{path}", self.hook_base)
    }
}

pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
    start_with(ctx, Options::from_env()?).await
}

/// [`start`] with settings given rather than read from the environment.
pub async fn start_with(ctx: Arc<ServiceContext>, opts: Options) -> anyhow::Result<Router> {
    let svc = Service::new(ctx, &MIGRATOR, TITLE).await?;
    let ctx = svc.ctx().clone();
    let token = match &opts.callback_token {
        Some(t) => {
            anyhow::ensure!(
                t.len() >= 16 && t.chars().all(|c| c.is_ascii_alphanumeric()),
                "ISP_MPESA_CALLBACK_TOKEN must be at least 16 letters or digits"
            );
            t.clone()
        }
        None => shared_token(&ctx).await?,
    };
    let base = opts
        .callback_base_url
        .clone()
        .unwrap_or_else(|| ctx.config.public_url.clone());
    let hook_base = format!("{}/hooks/daraja/{token}", base.trim_end_matches('/'));
    if let Some(w) = daraja::banned_word(&base) {
        anyhow::bail!(
            "the callback base URL {base:?} contains {w:?}, which Safaricom refuses in callback URLs (ISP_MPESA_CALLBACK_BASE_URL)"
        );
    }
    let m = Arc::new(Mpesa {
        daraja: daraja::Daraja::new(opts.daraja.clone(), ctx.pool.clone())?,
        ctx: ctx.clone(),
        opts,
        hook_base,
        token,
        pull_now: tokio::sync::Notify::new(),
    });
    stk::spawn_query_worker(m.clone());
    c2b::spawn_workers(m.clone());
    commissions::spawn_worker(m.clone());

    let colls = collections::Collections::new();
    let routes = Router::new()
        .merge(stk::routes(m.clone(), colls.stk_requests.clone()))
        .merge(c2b::routes(m.clone()))
        .merge(commissions::routes(m.clone(), colls.commissions.clone()))
        .merge(reconciliation::routes(m.clone()))
        .merge(hooks::routes(m.clone()));
    let mut doc = stk::openapi();
    doc.merge(c2b::openapi());
    doc.merge(commissions::openapi());
    doc.merge(reconciliation::openapi());
    let rules = m.opts.commissions.clone();
    Ok(svc
        .collection(&colls.transactions)
        .collection(&colls.stk_requests)
        .collection(&colls.payments)
        .collection(&colls.commissions)
        .merge(routes, doc)
        .consume(
            "mpesa-billing",
            "isp.billing.>",
            projections::BillingEvents {
                rules: rules.clone(),
                auto_stk: m.opts.auto_stk,
            },
        )
        .consume(
            "mpesa-core",
            "isp.core.>",
            projections::CoreEvents {
                rules: rules.clone(),
            },
        )
        .consume("mpesa-crm", "isp.crm.>", projections::CrmEvents { rules })
        .router())
}

/// The callback path token every replica uses: made once, kept in the schema.
async fn shared_token(ctx: &ServiceContext) -> anyhow::Result<String> {
    let fresh = isp_platform::auth::password::generate(40);
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ('callback_token', $1) ON CONFLICT DO NOTHING",
    )
    .bind(&fresh)
    .execute(&ctx.pool)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'callback_token'")
            .fetch_one(&ctx.pool)
            .await?,
    )
}
