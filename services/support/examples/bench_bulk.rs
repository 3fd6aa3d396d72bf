//! Bulk send to N filtered subscribers (default 10,000; 2,000 more on another plan
//! are filtered out): time from the request to all N recipients queued (their log
//! rows and Notify's requests committed), to all N requests published to
//! JetStream by Support's outbox relay, to all N SMS received by the Africa's
//! Talking stand-in from Notify (unthrottled), and to all N shown Delivered in
//! Support's message log after the stand-in's delivery reports.
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

const AT_TOKEN: &str = "bench-bulk-at-callback-token";

thread_local! {
    // StartFns cannot capture; the stand-in's port is known at run time only.
    static NOTIFY: std::cell::RefCell<Option<svc_notify::Settings>> =
        const { std::cell::RefCell::new(None) };
}

fn notify() -> (ServiceInfo, StartFn) {
    (svc_notify::INFO, |c| {
        let s = NOTIFY
            .with(|s| s.borrow().clone())
            .expect("notify settings");
        Box::pin(svc_notify::start_with(c, s))
    })
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
    let gw = isp_standin_sms::StandIns::start(isp_standin_sms::Options {
        report_delay: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    let o = gw.options();
    let sms = svc_notify::SmsProvider::AfricasTalking(
        svc_notify::provider::africastalking::AfricasTalkingConfig {
            username: o.at_username.clone(),
            api_key: o.at_api_key.clone(),
            sender_id: Some("ISPNET".into()),
            base_url: gw.base_url.clone(),
        },
    );
    NOTIFY.with(|c| *c.borrow_mut() = Some(svc_notify::Settings::unthrottled(sms, AT_TOKEN)));
    let app = TestApp::spawn(&[core(), support(), notify()]).await;
    gw.set_at_delivery_callback(format!(
        "{}/api/notify/callbacks/africastalking/{AT_TOKEN}/delivery",
        app.base
    ));
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
    let sent = {
        let t = Instant::now();
        while (gw.sms().len() as i64) < n && t.elapsed() < Duration::from_secs(900) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ((gw.sms().len() as i64) >= n).then(|| t0.elapsed())
    };
    let delivered = wait_for(
        &pool,
        &format!(
            "SELECT count(*) FROM support.messages WHERE parent = '{parent}' AND status = 'Delivered'"
        ),
        n,
        Duration::from_secs(900),
    )
    .await
    .map(|_| t0.elapsed());
    println!("bulk send to {n} filtered subscribers (of {}):", n + 2000);
    println!("  202 answered after      {answered:?}");
    println!("  all {n} queued after  {queued:?}  (target < 2 s)");
    println!("  all {n} published to JetStream after {published:?}");
    println!("  all {n} SMS at the Africa's Talking stand-in after {sent:?}");
    println!("  all {n} Delivered in Support's log after {delivered:?}");
}
