//! The daily run (docs/contract.md#billing, flow 4).
//!
//! One transaction, three set-based statements, so 100,000 due subscribers cost a
//! few statements rather than 100,000 round trips:
//! 1. invoice every Active subscriber whose `nextDueDate` has come and who is not
//!    on an active trial, one invoice per (subscriber, period start): the unique
//!    key makes a repeated run, a second replica or a catch-up after a missed day
//!    create nothing twice; credit in `accountBalance` settles the new invoice;
//! 2. mark Unpaid invoices past their due date Overdue;
//! 3. suspend Active subscribers who owe money (`accountBalance` < 0) and have an
//!    Overdue invoice, unless their `gracePeriodEndDate` is after the run date or
//!    their trial is still running; the suspension's reason is 'Non-payment'.
//!
//! Events (`invoice.created`, `invoice.overdue`, `subscriber.suspended`,
//! `subscriber.updated`) are written to the outbox by the same statements. A
//! transaction-level advisory lock makes concurrent runs take turns; the second
//! finds nothing left to do. Each run is logged in `daily_runs`, with the due
//! subscribers it could not invoice because their plan is unknown to Billing.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use isp_platform::auth::Principal;
use isp_platform::http::ApiJson;
use isp_platform::{ApiError, ApiResult, ServiceContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::App;
use isp_platform::collection::Operation;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What one run did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub id: Uuid,
    pub run_date: NaiveDate,
    pub invoices_created: i64,
    pub invoices_overdue: i64,
    pub subscribers_suspended: i64,
    /// Due subscribers not invoiced because Billing does not know their plan.
    pub skipped_unknown_plan: i64,
    pub duration_ms: i64,
}

/// Billing's run settings, read once at start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// `ISP_BILLING_PAYMENT_TERMS_DAYS` (default 0): an invoice Billing creates
    /// for a period is due this many days after the later of the period's start
    /// and the day the invoice is created.
    pub payment_terms_days: u32,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let days: u32 = isp_platform::config::env_parse("ISP_BILLING_PAYMENT_TERMS_DAYS", 0)?;
        anyhow::ensure!(
            days <= 365,
            "ISP_BILLING_PAYMENT_TERMS_DAYS={days}: at most 365 days"
        );
        Ok(Self {
            payment_terms_days: days,
        })
    }

    /// When an invoice for a period starting `start`, created on `today`, is due.
    pub fn due_date(&self, start: NaiveDate, today: NaiveDate) -> NaiveDate {
        start.max(today) + chrono::Days::new(self.payment_terms_days.into())
    }
}

/// Most periods one run catches up per subscriber (credit covering several
/// periods in a row); anything beyond is picked up by the next run.
const MAX_CATCH_UP: usize = 24;

/// Who is due, computed completely before any invoice is inserted. (Inside one
/// statement the planner may interleave the anti-join with the insert and rescan
/// the growing invoices heap per row: quadratic. A temporary table, analyzed,
/// keeps every step a hash or merge join.)
const DUE_SQL: &str = r#"
CREATE TEMP TABLE billing_run_due ON COMMIT DROP AS
SELECT s.id, s.account_number, s.next_due_date AS nd, x.ps, x.anchor,
       add_cycle(x.ps, s.billing_cycle, x.anchor) AS pe,
       GREATEST(x.ps, $1::date) + $2::integer AS due,
       period_price(p.price, p.billing_cycle, s.billing_cycle) AS price,
       p.name, s.account_balance AS bal
FROM subscribers s
JOIN plans p ON p.id = s.service_plan
CROSS JOIN LATERAL (
    -- A period never starts inside a trial: it starts the day after the trial
    -- ends (and the anchor day moves there), else at nextDueDate.
    SELECT t.ps, CASE WHEN t.ps = s.next_due_date THEN s.billing_anchor_day
                      ELSE extract(day FROM t.ps)::integer END AS anchor
    FROM (SELECT GREATEST(s.next_due_date, s.trial_end_date + 1) AS ps) t
) x
WHERE s.status = 'Active' AND s.next_due_date <= $1
  AND (s.trial_end_date IS NULL OR s.trial_end_date < $1)
  AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.subscriber_id = s.id AND i.period_start = x.ps)
"#;

/// Due subscribers step 1 cannot invoice: their plan never reached Billing.
const UNKNOWN_PLAN_SQL: &str = r#"
SELECT count(*) FROM subscribers s
WHERE s.status = 'Active' AND s.next_due_date <= $1
  AND (s.trial_end_date IS NULL OR s.trial_end_date < $1)
  AND NOT EXISTS (SELECT 1 FROM plans p WHERE p.id = s.service_plan)
"#;

const OVERDUE_SQL: &str = r#"
WITH od AS (
    UPDATE invoices SET status = 'Overdue', updated_at = now()
    WHERE status = 'Unpaid' AND due_date < $1
    RETURNING id, invoice_number, subscriber_id, amount_due, due_date, status, updated_at
), ev AS (
    INSERT INTO outbox (id, subject, type, payload)
    SELECT e.id, 'isp.billing.invoice.overdue', 'invoice.overdue',
           cloud_event(e.id, 'invoice.overdue', o.id::text, jsonb_build_object(
               'id', o.id, 'invoiceNumber', o.invoice_number, 'subscriber', o.subscriber_id,
               'amountDue', to_char(o.amount_due, 'FM999999999990.00'), 'dueDate', o.due_date,
               'status', o.status,
               'updatedAt', to_char(o.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
    FROM od o CROSS JOIN LATERAL (SELECT uuid_v7() AS id, o.id AS k) e
)
SELECT count(*) FROM od
"#;

const SUSPEND_SQL: &str = r#"
WITH su AS (
    UPDATE subscribers s SET status = 'Suspended', suspension_reason = 'Non-payment', updated_at = now()
    WHERE s.status = 'Active'
      AND (s.grace_period_end_date IS NULL OR s.grace_period_end_date <= $1)
      AND (s.trial_end_date IS NULL OR s.trial_end_date < $1)
      AND s.account_balance < 0
      AND EXISTS (SELECT 1 FROM invoices i WHERE i.subscriber_id = s.id AND i.status = 'Overdue')
    RETURNING s.id, s.account_number, subscriber_snapshot(s) AS snap,
              (SELECT min(i.invoice_number) FROM invoices i WHERE i.subscriber_id = s.id AND i.status = 'Overdue') AS inv
), ev AS (
    INSERT INTO outbox (id, subject, type, payload)
    SELECT e.id, 'isp.billing.subscriber.suspended', 'subscriber.suspended',
           cloud_event(e.id, 'subscriber.suspended', u.id::text, jsonb_build_object(
               'subscriberId', u.id, 'accountNumber', u.account_number,
               'reason', 'Invoice ' || u.inv || ' overdue',
               'at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
    FROM su u CROSS JOIN LATERAL (SELECT uuid_v7() AS id, u.id AS k) e
), ev2 AS (
    INSERT INTO outbox (id, subject, type, payload)
    SELECT e.id, 'isp.billing.subscriber.updated', 'subscriber.updated',
           cloud_event(e.id, 'subscriber.updated', u.id::text, u.snap)
    FROM su u CROSS JOIN LATERAL (SELECT uuid_v7() AS id, u.id AS k) e
)
SELECT count(*) FROM su
"#;

/// The run holds this lock exclusively; payments and invoice edits hold it shared.
/// The run touches subscribers and invoices in bulk in an order a single payment
/// cannot follow (invoice, then subscriber), so without it the two could
/// deadlock; with it a payment simply waits for a running run (seconds).
const RUN_LOCK: &str = "hashtextextended('billing.daily_run', 0)";

/// Waits for a running daily run to finish, and keeps the next one from starting
/// until this transaction ends.
pub async fn wait_for_run(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SELECT pg_advisory_xact_lock_shared({RUN_LOCK})"))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Runs the daily job for `date` and logs it. Safe to call concurrently and
/// repeatedly.
pub async fn run(
    pool: &PgPool,
    date: NaiveDate,
    trigger: &str,
    settings: Settings,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let started_at = Utc::now();
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("SELECT pg_advisory_xact_lock({RUN_LOCK})"))
        .execute(&mut *tx)
        .await?;
    let invoices_created = invoice_due(&mut tx, date, settings).await?;
    let skipped_unknown_plan: i64 = sqlx::query_scalar(UNKNOWN_PLAN_SQL)
        .bind(date)
        .fetch_one(&mut *tx)
        .await?;
    if skipped_unknown_plan > 0 {
        tracing::warn!(
            %date,
            skipped_unknown_plan,
            "due subscribers not invoiced: their plan is unknown to Billing"
        );
    }
    let invoices_overdue: i64 = sqlx::query_scalar(OVERDUE_SQL)
        .bind(date)
        .fetch_one(&mut *tx)
        .await?;
    let subscribers_suspended: i64 = sqlx::query_scalar(SUSPEND_SQL)
        .bind(date)
        .fetch_one(&mut *tx)
        .await?;
    let id = Uuid::now_v7();
    let duration_ms = started.elapsed().as_millis() as i64;
    sqlx::query(
        "INSERT INTO daily_runs (id, run_date, trigger, invoices_created, invoices_overdue,
             subscribers_suspended, skipped_unknown_plan, duration_ms, started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(date)
    .bind(trigger)
    .bind(invoices_created as i32)
    .bind(invoices_overdue as i32)
    .bind(subscribers_suspended as i32)
    .bind(skipped_unknown_plan as i32)
    .bind(duration_ms as i32)
    .bind(started_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let report = RunReport {
        id,
        run_date: date,
        invoices_created,
        invoices_overdue,
        subscribers_suspended,
        skipped_unknown_plan,
        duration_ms,
    };
    tracing::info!(?report, "daily run done");
    Ok(report)
}

/// Step 1, repeated while credit keeps settling whole periods (catch-up).
pub async fn invoice_due(
    tx: &mut PgConnection,
    date: NaiveDate,
    settings: Settings,
) -> anyhow::Result<i64> {
    let mut total = 0;
    for _ in 0..MAX_CATCH_UP {
        sqlx::query("DROP TABLE IF EXISTS billing_run_due")
            .execute(&mut *tx)
            .await?;
        sqlx::query(DUE_SQL)
            .bind(date)
            .bind(settings.payment_terms_days as i32)
            .execute(&mut *tx)
            .await?;
        sqlx::query("ANALYZE billing_run_due")
            .execute(&mut *tx)
            .await?;
        let n = crate::ledger::charge_due(tx).await?;
        total += n;
        if n == 0 {
            break;
        }
    }
    Ok(total)
}

// ---- scheduler ------------------------------------------------------------------

/// `ISP_BILLING_DAILY_RUN_AT` (default `00:30`): the local time (in `ISP_TIMEZONE`,
/// default Africa/Nairobi) the run fires each day. `ISP_BILLING_SCHEDULER=off`
/// disables it (tests, or replicas that should leave it to others; running it on
/// several replicas is safe anyway).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub at: NaiveTime,
    pub enabled: bool,
}

impl Schedule {
    pub fn from_env() -> anyhow::Result<Self> {
        let at = isp_platform::config::env_or("ISP_BILLING_DAILY_RUN_AT", "00:30");
        let at = NaiveTime::parse_from_str(&at, "%H:%M")
            .map_err(|e| anyhow::anyhow!("ISP_BILLING_DAILY_RUN_AT={at:?}: {e}"))?;
        let enabled = isp_platform::config::env_or("ISP_BILLING_SCHEDULER", "on") != "off";
        Ok(Self { at, enabled })
    }
}

/// The next instant the schedule fires after `now`, in `tz`.
pub fn next_fire(
    now: chrono::DateTime<Utc>,
    at: NaiveTime,
    tz: chrono_tz::Tz,
) -> chrono::DateTime<Utc> {
    let local = now.with_timezone(&tz);
    let mut day = local.date_naive();
    loop {
        if let Some(t) = tz.from_local_datetime(&day.and_time(at)).earliest() {
            let t = t.with_timezone(&Utc);
            if t > now {
                return t;
            }
        }
        day = day.succ_opt().expect("far from the end of time");
    }
}

/// Fires the run every day at the configured local time. At start it also runs at
/// once if today's run time has passed and no run is logged for today (the
/// process was down at run time): nothing is ever skipped, and the run itself
/// catches up on every due date up to today.
pub fn spawn_scheduler(ctx: Arc<ServiceContext>, schedule: Schedule, settings: Settings) {
    if !schedule.enabled {
        return;
    }
    tokio::spawn(async move {
        let tz = ctx.config.timezone;
        let today = ctx.today();
        let todays_time = tz
            .from_local_datetime(&today.and_time(schedule.at))
            .earliest()
            .map(|t| t.with_timezone(&Utc));
        let ran_today: Result<bool, _> =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM daily_runs WHERE run_date = $1)")
                .bind(today)
                .fetch_one(&ctx.pool)
                .await;
        if todays_time.is_some_and(|t| t <= Utc::now()) && matches!(ran_today, Ok(false)) {
            if let Err(e) = run(&ctx.pool, today, "Scheduler", settings).await {
                tracing::error!(error = ?e, "catch-up daily run failed");
            }
        }
        loop {
            let next = next_fire(Utc::now(), schedule.at, tz);
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let date = ctx.today();
            if let Err(e) = run(&ctx.pool, date, "Scheduler", settings).await {
                tracing::error!(error = ?e, %date, "daily run failed");
            }
        }
    });
}

// ---- HTTP -----------------------------------------------------------------------

/// `POST /api/billing/jobs/daily-run`.
pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(run_now))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// `YYYY-MM-DD`, today or earlier (a catch-up); default today in the ISP's
    /// time zone. A future date is a 400.
    #[serde(default)]
    #[schema(format = Date)]
    date: Option<String>,
}

/// Runs the daily job now for a date (Admin only). 200 `{doc, message}` with the
/// run log entry.
// The body may be left out (today's run): ApiJson reads an empty body as `{}`.
#[utoipa::path(post, path = "/api/billing/jobs/daily-run", tag = "jobs", request_body = Option<RunInput>,
    extensions(("x-rules" = json!(["date: today or earlier, in the ISP's time zone"]))),
    responses((status = 200, description = "{doc: the daily run log entry, message}"), (status = 400), (status = 403)))]
async fn run_now(
    State(s): State<App>,
    p: Principal,
    ApiJson(input): ApiJson<RunInput>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    s.colls.daily_runs.authorize(&p, Operation::Action("run"))?;
    let today = s.ctx.today();
    let date = match input.date.as_deref() {
        None => today,
        Some(d) => NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|_| ApiError::field("date", "Must be a date (YYYY-MM-DD)."))?,
    };
    if date > today {
        // A future run would invoice, mark overdue and suspend ahead of time.
        return Err(ApiError::field(
            "date",
            format!(
                "The run date cannot be in the future (today is {today} in {}).",
                s.ctx.config.timezone
            ),
        ));
    }
    let report = run(&s.ctx.pool, date, "Manual", s.options.settings)
        .await
        .map_err(ApiError::Internal)?;
    let mut conn = s.ctx.pool.acquire().await?;
    let doc = s
        .colls
        .daily_runs
        .fetch(&mut conn, report.id, false)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("run log vanished")))?;
    Ok((
        StatusCode::OK,
        Json(
            json!({"doc": s.colls.daily_runs.present(&p, &doc), "message": "Daily run complete."}),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fire_is_the_next_local_run_time() {
        let tz = chrono_tz::Africa::Nairobi;
        let at = NaiveTime::from_hms_opt(0, 30, 0).unwrap();
        // 2026-11-25 10:00 UTC = 13:00 Nairobi -> next is 2026-11-26 00:30 Nairobi = 2026-11-25 21:30 UTC.
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap();
        assert_eq!(
            next_fire(now, at, tz),
            Utc.with_ymd_and_hms(2026, 11, 25, 21, 30, 0).unwrap()
        );
        // 21:00 UTC = 00:00 Nairobi on the 26th -> 00:30 the same local day.
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 21, 0, 0).unwrap();
        assert_eq!(
            next_fire(now, at, tz),
            Utc.with_ymd_and_hms(2026, 11, 25, 21, 30, 0).unwrap()
        );
    }
}
