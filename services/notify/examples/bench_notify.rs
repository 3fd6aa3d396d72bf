//! Benchmark: N SMS requests (default 10,000) published through a requester's
//! outbox, the way Support's bulk send publishes them, sent by Notify to the
//! Africa's Talking stand-in at an unthrottled rate, delivery reports included.
//! Prints the time from the first request to: all published to JetStream, all
//! recorded (Queued) by Notify, all accepted by the gateway, all reported Delivered.
//!
//! ```sh
//! ISP_TEST_PG_ADMIN_URL=postgres://postgres@127.0.0.1:55432/postgres \
//! ISP_TEST_NATS_BIN=$(command -v nats-server) \
//!   cargo run --release -p svc-notify --example bench_notify [-- <requests> <concurrency> <request consumers>]
//! ```
//!
//! Throw-away database and nats-server, as the tests use; never run by `cargo test`.

use std::time::{Duration, Instant};

use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_platform::runtime::{self, Shared};
use isp_standin_sms::{Options, StandIns};
use isp_testkit::TestApp;
use svc_notify::provider::africastalking::AfricasTalkingConfig;
use svc_notify::{EmailProvider, Settings, SmsProvider};
use uuid::Uuid;

const TOKEN: &str = "bench-callback-token-0123456789";

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: i64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let concurrency: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    let consumers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4);
    std::env::set_var("ISP_DATABASE_POOL_SIZE", "10");
    let app = TestApp::spawn(&[]).await;
    std::env::set_var("ISP_DATABASE_POOL_SIZE", "10");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let gw = StandIns::start(Options {
        at_delivery_callback: Some(format!(
            "{base}/api/notify/callbacks/africastalking/{TOKEN}/delivery"
        )),
        report_delay: Duration::from_millis(10),
        ..Options::default()
    })
    .await?;
    let o = gw.options().clone();
    let settings = Settings {
        sms: SmsProvider::AfricasTalking(AfricasTalkingConfig {
            username: o.at_username,
            api_key: o.at_api_key,
            sender_id: None,
            base_url: gw.base_url.clone(),
        }),
        email: EmailProvider::Log,
        sms_rate_per_second: 0.0,
        email_rate_per_second: 0.0,
        concurrency,
        request_consumers: consumers,
        max_attempts: 5,
        retry_base: Duration::from_millis(200),
        retry_max: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        lease: Duration::from_secs(120),
        poll_interval: Duration::from_millis(200),
        at_callback_token: TOKEN.into(),
        twilio_auth_token: None,
        twilio_status_url: String::new(),
        twilio_inbound_url: String::new(),
    };
    let producer = app.db.schema_pool("support", 4).await?;
    isp_events::migrate(&producer, &runtime::NO_MIGRATIONS).await?;
    let bus = isp_events::Bus::from_client(app.shared.nats.clone());
    bus.ensure_stream().await?;
    isp_events::spawn_relay(producer.clone(), bus.js, app.shared.shutdown.clone());

    let shared = Shared {
        ..app.shared.clone()
    };
    let ctx = runtime::context(svc_notify::INFO, &shared).await?;
    let router = svc_notify::start_with(ctx.clone(), settings).await?;
    let sd = app.shared.shutdown.clone();
    tokio::spawn(async move {
        let _ = isp_platform::http::serve(listener, router, sd).await;
    });
    let pool = ctx.pool.clone();

    println!("{n} SMS requests, Notify unthrottled, {concurrency} sends in flight, {consumers} request pullers");
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let mut tx = producer.begin().await?;
        for _ in 0..1000.min(n - i) {
            let req = NotificationRequest {
                id: Uuid::now_v7(),
                channel: NotificationChannel::Sms,
                recipient: format!("+2547{:08}", 10_000_000 + i),
                subject: None,
                body: format!("Planned maintenance tonight 22:00-23:00. Ref {i}"),
                category: NotificationCategory::Transactional,
                reference: Some(format!("bulk-{i}")),
            };
            enqueue(&mut tx, "support", &SupportNotificationRequested(req)).await?;
            i += 1;
        }
        tx.commit().await?;
    }
    println!(
        "  requests committed to the requester's outbox: {:>8.2?}",
        t.elapsed()
    );
    let mut marks = [None; 4];
    let names = [
        "published to JetStream (requester's relay)",
        "recorded by Notify (Queued)",
        "accepted by the gateway stand-in",
        "reported Delivered",
    ];
    while marks.iter().any(Option::is_none) {
        let now = [
            count(
                &producer,
                "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL",
            )
            .await,
            count(&pool, "SELECT count(*) FROM deliveries").await,
            gw.sms().len() as i64,
            count(
                &pool,
                "SELECT count(*) FROM deliveries WHERE status = 'Delivered'",
            )
            .await,
        ];
        for k in 0..4 {
            if marks[k].is_none() && now[k] >= n {
                marks[k] = Some(t.elapsed());
                println!("  all {:<44} {:>8.2?}", names[k], t.elapsed());
            }
        }
        if t.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("gave up after 30 minutes: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = marks[2].expect("set").as_secs_f64();
    println!("  gateway send rate: {:.0} SMS/s", n as f64 / total);
    assert_eq!(gw.attempts() as i64, n, "each sent exactly once");
    Ok(())
}
