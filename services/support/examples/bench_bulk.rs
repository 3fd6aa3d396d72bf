//! Bulk send to N filtered subscribers (default 10,000; 2,000 more on another plan
//! are filtered out): time from the request to all N recipients queued (their log
//! rows and Notify's requests committed), and to all N requests published to
//! JetStream by Support's outbox relay.
//!
//! The subscriber projection is seeded with one `INSERT ... SELECT` rather than
//! 12,000 Billing events: what is measured is the bulk send, not the projection.
//!
//! ```sh
//! ISP_TEST_PG_ADMIN_URL=postgres://postgres@127.0.0.1:55432/postgres \
//!   cargo run --release -p svc-support --example bench_bulk [-- <subscribers>]
//! ```

use std::time::{Duration, Instant};

use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_testkit::TestApp;
use serde_json::json;
use uuid::Uuid;

fn core() -> (ServiceInfo, StartFn) {
    (svc_core::INFO, |c| Box::pin(svc_core::start(c)))
}
fn support() -> (ServiceInfo, StartFn) {
    (svc_support::INFO, |c| Box::pin(svc_support::start(c)))
}

async fn wait_for(pool: &sqlx::PgPool, sql: &str, n: i64, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    loop {
        let c: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        if c >= n {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            eprintln!("gave up at {c} of {n}: {sql}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() {
    let n: i64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("subscribers: a number"))
        .unwrap_or(10_000);
    let app = TestApp::spawn(&[core(), support()]).await;
    let (token, _) = app.staff_token("Support Agent").await;
    let pool = app.admin_pool().await;
    let (plan, other) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO support.plans (id, name, updated_at) VALUES ($1, 'Home', now()), ($2, 'Other', now())",
    )
    .bind(plan)
    .bind(other)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO support.subscribers (id, account_number, first_name, last_name, mpesa_number,
             contact_phone, status, service_plan, updated_at)
         SELECT gen_random_uuid(), 'ACC-' || lpad(i::text, 6, '0'), 'First' || i, 'Last',
             '+2547' || lpad(i::text, 8, '0'), '+2547' || lpad(i::text, 8, '0'), 'Active',
             CASE WHEN i <= $1 THEN $2 ELSE $3 END, now()
         FROM generate_series(1, $1 + 2000) AS i",
    )
    .bind(n)
    .bind(plan)
    .bind(other)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE support.subscribers")
        .execute(&pool)
        .await
        .unwrap();
    // The staff projection must know the agent before its token works here.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let t0 = Instant::now();
    let r = app
        .post(
            "/api/support/messages/bulk",
            &token,
            json!({"audience": {"type": "subscribers", "plans": [plan], "statuses": ["Active"]},
                   "channel": "SMS", "category": "Transactional", "triggerEvent": "bulk.outage",
                   "content": "Dear {{ firstName }}, fibre maintenance tonight 22:00-23:00 on account {{ accountNumber }}."}),
        )
        .await;
    let answered = t0.elapsed();
    assert_eq!(r.status, reqwest::StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["recipientCount"], n);
    let parent = r.body["doc"]["id"].as_str().unwrap().to_string();
    let queued = wait_for(
        &pool,
        &format!(
            "SELECT count(*) FROM support.messages WHERE parent = '{parent}' AND status = 'Queued'"
        ),
        n,
        Duration::from_secs(120),
    )
    .await
    .map(|_| t0.elapsed());
    let published = wait_for(
        &pool,
        "SELECT count(*) FROM support.outbox
         WHERE type = 'notification.requested.support' AND published_at IS NOT NULL",
        n,
        Duration::from_secs(600),
    )
    .await
    .map(|_| t0.elapsed());
    println!("bulk send to {n} filtered subscribers (of {}):", n + 2000);
    println!("  202 answered after      {answered:?}");
    println!("  all {n} queued after  {queued:?}  (target < 2 s)");
    println!("  all {n} published to JetStream after {published:?}");
}
