//! Billing over real HTTP, Postgres and NATS, with Core for staff, tokens and plans.
//! Each test names the rule (docs/billing.md) or the access line it proves.

#[path = "api/credit_suspension.rs"]
mod credit_suspension;
#[path = "api/daily_run.rs"]
mod daily_run;
#[path = "api/due_dates.rs"]
mod due_dates;
#[path = "api/edits.rs"]
mod edits;
#[path = "api/expenses.rs"]
mod expenses;
#[path = "api/invoices_payments.rs"]
mod invoices_payments;
#[path = "api/ledger_bounds.rs"]
mod ledger_bounds;
#[path = "api/mpesa.rs"]
mod mpesa;
#[path = "api/period_prices.rs"]
mod period_prices;
#[path = "api/projections.rs"]
mod projections;
#[path = "api/subscribers.rs"]
mod subscribers;

use chrono::NaiveDate;
use isp_testkit::fixtures::subscriber_body;
use isp_testkit::{service, Res, ServiceInfo, StartFn, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Billing's defaults, but runs are started by the tests, not by the clock.
fn options() -> svc_billing::Options {
    let mut o = svc_billing::Options::default();
    o.schedule.enabled = false;
    o
}

fn billing() -> (ServiceInfo, StartFn) {
    (svc_billing::INFO, |c| {
        Box::pin(svc_billing::start_with(c, options()))
    })
}

async fn app() -> TestApp {
    TestApp::spawn(&[service!(svc_core), billing()]).await
}

/// Billing started with other settings (given per app, never through the
/// process's environment, which tests running side by side share).
async fn app_with(billing: StartFn) -> TestApp {
    TestApp::spawn(&[service!(svc_core), (svc_billing::INFO, billing)]).await
}

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// Creates a plan through Core and waits until Billing's projection has it.
async fn plan(app: &TestApp, admin: &str, extra: Value) -> String {
    let id = app.create_plan(admin, extra).await;
    app.wait_for(&format!(
        "SELECT count(*) FROM billing.plans WHERE id = '{id}'"
    ))
    .await;
    id
}

async fn create_sub(app: &TestApp, token: &str, body: Value) -> Res {
    app.post("/api/billing/subscribers", token, body).await
}

/// Creates a subscriber and makes it Active with `next_due` directly in the
/// database (provisioning itself is tested through the NOC event).
async fn active_sub(app: &TestApp, token: &str, plan: &str, next_due: &str) -> (String, String) {
    let r = create_sub(app, token, subscriber_body(plan)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let first_invoice = r.body["invoice"]["id"].as_str().unwrap().to_string();
    app.sql(&format!(
        "UPDATE billing.subscribers SET status = 'Active', next_due_date = '{next_due}',
             billing_anchor_day = extract(day FROM '{next_due}'::date) WHERE id = '{id}'"
    ))
    .await;
    (id, first_invoice)
}

async fn run(app: &TestApp, admin: &str, date: &str) -> Value {
    let r = app
        .post("/api/billing/jobs/daily-run", admin, json!({"date": date}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["doc"].clone()
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    let r = app.get(path, token).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.body
}

async fn pay(
    app: &TestApp,
    token: &str,
    invoice: &str,
    amount: Value,
    reference: &str,
    method: &str,
) -> Res {
    app.post(
        "/api/billing/payments",
        token,
        json!({"paymentReference": reference, "invoice": invoice, "amountPaid": amount,
               "paymentMethod": method, "paymentDate": "2026-11-20"}),
    )
    .await
}

/// (amountDue, periodEnd, dueDate, status) of a subscriber's invoice for the period
/// starting `start`.
async fn period_invoice(
    app: &TestApp,
    sub: &str,
    start: &str,
) -> (String, NaiveDate, NaiveDate, String) {
    let pool = app.admin_pool().await;
    sqlx::query_as(&format!(
        "SELECT amount_due::text, period_end, due_date, status FROM billing.invoices
         WHERE subscriber_id = '{sub}' AND period_start = '{start}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap_or_else(|e| panic!("no invoice for {sub} from {start}: {e}"))
}

fn today() -> NaiveDate {
    chrono::Utc::now()
        .with_timezone(&chrono_tz::Africa::Nairobi)
        .date_naive()
}

async fn invoice_state(app: &TestApp, id: &str) -> (String, String) {
    let pool = app.admin_pool().await;
    sqlx::query_as(&format!(
        "SELECT status, amount_paid::text FROM billing.invoices WHERE id = '{id}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap()
}
