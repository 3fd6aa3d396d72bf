//! C2B confirmation throughput and latency through the whole chain: Daraja-shaped
//! confirmation callbacks posted to M-Pesa's `/hooks/daraja/<token>/c2b/confirmation`
//! at a fixed rate (default 200 per second for 60 s), each paying one subscriber's
//! open invoice -> M-Pesa credits the receipt and writes `mpesa.payment.confirmed`
//! to its outbox -> the relay publishes on NATS JetStream -> Billing's consumer
//! records the Payment and marks the invoice Paid. Core, Billing and M-Pesa run in
//! this process on real Postgres and NATS (the test harness's private database and
//! nats-server), as in the integration tests.
//!
//! Latency is from the moment a callback is sent to the invoice's Paid update in
//! Billing (`invoices.updated_at`, the transaction's time, same machine clock).
//! Then it checks: every callback answered 200, every receipt credited once in
//! M-Pesa, one Payment per receipt in Billing, every invoice Paid (0 lost, 0
//! duplicated). It prints the numbers; nothing here asserts a timing.
//!
//! ```sh
//! ISP_TEST_PG_ADMIN_URL=postgres://postgres@127.0.0.1:55432/postgres ISP_TEST_NATS_BIN=$(command -v nats-server) \
//!   cargo run --release -p svc-mpesa --example c2b_latency [-- <per second> <seconds>]
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_testkit::{eventually, TestApp};
use serde_json::json;

const TOKEN: &str = "benchcallbacktoken0123456789";

fn services() -> Vec<(ServiceInfo, StartFn)> {
    vec![
        (svc_core::INFO, |c| Box::pin(svc_core::start(c))),
        (svc_billing::INFO, |c| {
            // ISP_BILLING_PAYMENT_LANES sets how many payments Billing records at once.
            let mut o = svc_billing::Options::from_env().expect("Billing settings");
            o.schedule.enabled = false;
            Box::pin(svc_billing::start_with(c, o))
        }),
    ]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Sub {
    account: String,
    invoice: String,
    amount: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(60);
    let total = (rate * secs) as usize;

    let app = TestApp::spawn(&services()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let ctx = isp_platform::runtime::context(svc_mpesa::INFO, &app.shared).await?;
    let mut o = svc_mpesa::Options::from_env()?;
    o.callback_token = Some(TOKEN.into());
    o.callback_base_url = Some(base.clone());
    o.c2b_register_at_start = false;
    o.pull_interval = None;
    let router = svc_mpesa::start_with(ctx, o).await?;
    tokio::spawn(isp_platform::http::serve(
        listener,
        router,
        app.shared.shutdown.clone(),
    ));
    let admin = app.admin_token().await;
    let pool = app.admin_pool().await;

    // One subscriber (with its open first invoice) per confirmation.
    let plan = app.create_plan(&admin, json!({"price": 2500})).await;
    let t0 = Instant::now();
    let ready = eventually(30, || async {
        let r = app
            .post(
                "/api/billing/subscribers",
                &admin,
                json!({"firstName": "Bench", "lastName": "Warmup", "mpesaNumber": "0712345678",
                       "servicePlan": plan, "billingCycle": "Monthly"}),
            )
            .await;
        r.status.is_success().then_some(())
    })
    .await;
    anyhow::ensure!(ready.is_some(), "Billing never learnt the plan");
    let app = Arc::new(app);
    let mut subs: Vec<Sub> = Vec::with_capacity(total);
    let mut made = 0;
    while made < total {
        let batch = (total - made).min(32);
        let futs = (0..batch).map(|i| {
            let app = app.clone();
            let admin = admin.clone();
            let plan = plan.clone();
            async move {
                let r = app
                    .post(
                        "/api/billing/subscribers",
                        &admin,
                        json!({"firstName": "Bench", "lastName": format!("S{}", made + i),
                               "mpesaNumber": "0712345678", "servicePlan": plan, "billingCycle": "Monthly"}),
                    )
                    .await;
                anyhow::ensure!(r.status.is_success(), "subscriber: {:?}", r.body);
                Ok(Sub {
                    account: r.body["doc"]["accountNumber"].as_str().unwrap().to_string(),
                    invoice: r.body["invoice"]["id"].as_str().unwrap().to_string(),
                    amount: r.body["invoice"]["amountDue"].as_str().unwrap().to_string(),
                })
            }
        });
        for s in futures::future::join_all(futs).await {
            subs.push(s?);
        }
        made += batch;
    }
    eprintln!(
        "{total} subscribers with open invoices in {:.1}s; sending {rate}/s for {secs}s",
        t0.elapsed().as_secs_f64()
    );
    // Let the setup's events drain (Billing's outbox published, M-Pesa's
    // projection holding every invoice) so they do not count against the run.
    let drained_setup = eventually(300, || async {
        let (unsent, projected): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM billing.outbox WHERE published_at IS NULL),
                    (SELECT count(*) FROM mpesa.invoices)",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        (unsent == 0 && projected as usize > total).then_some(())
    })
    .await;
    anyhow::ensure!(drained_setup.is_some(), "the setup's events never drained");
    eprintln!("setup drained after {:.1}s", t0.elapsed().as_secs_f64());

    let url = format!("{base}/hooks/daraja/{TOKEN}/c2b/confirmation");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let payer = svc_mpesa::daraja::msisdn_sha256("254712345678");
    let mut sent: HashMap<String, (String, DateTime<Utc>)> = HashMap::with_capacity(total);
    let mut answers = vec![];
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    for (i, s) in subs.iter().enumerate() {
        tick.tick().await;
        let receipt = format!("B{i:09}");
        let body = json!({"TransactionType": "Pay Bill", "TransID": receipt,
            "TransTime": svc_mpesa::daraja::eat_now().format("%Y%m%d%H%M%S").to_string(),
            "TransAmount": s.amount, "BusinessShortCode": "174379", "BillRefNumber": s.account,
            "InvoiceNumber": "", "OrgAccountBalance": "", "ThirdPartyTransID": "",
            "MSISDN": payer, "FirstName": "JOHN", "MiddleName": "", "LastName": "DOE"});
        sent.insert(receipt, (s.invoice.clone(), Utc::now()));
        let (http, url) = (http.clone(), url.clone());
        answers.push(tokio::spawn(async move {
            match http.post(&url).json(&body).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        }));
    }
    let send_secs = start.elapsed().as_secs_f64();
    let mut not_ok = 0;
    for a in answers {
        if a.await.unwrap_or(0) != 200 {
            not_ok += 1;
        }
    }
    eprintln!(
        "sent {total} in {send_secs:.1}s ({:.0}/s); {not_ok} answered other than 200",
        total as f64 / send_secs
    );

    // Wait for Billing to catch up (at most 120 s after the last send).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let paid: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM billing.invoices i JOIN billing.payments p ON p.invoice_id = i.id
             WHERE i.status = 'Paid' AND p.payment_reference LIKE 'B%'",
        )
        .fetch_one(&pool)
        .await?;
        if paid as usize >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained = start.elapsed().as_secs_f64();

    // A duplicate would be a receipt recorded twice or an invoice paid twice.
    let rows: Vec<(String, String, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT p.payment_reference, p.invoice_id::text, i.updated_at,
                greatest(count(*) OVER (PARTITION BY p.payment_reference),
                         count(*) OVER (PARTITION BY p.invoice_id))
         FROM billing.payments p JOIN billing.invoices i ON i.id = p.invoice_id
         WHERE p.payment_reference LIKE 'B%' AND i.status = 'Paid'",
    )
    .fetch_all(&pool)
    .await?;
    let credited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM mpesa.payments WHERE receipt LIKE 'B%'")
            .fetch_one(&pool)
            .await?;
    let mut lat = vec![];
    let mut dup = 0;
    let mut wrong_invoice = 0;
    let mut seen = std::collections::HashSet::new();
    for (receipt, invoice, paid_at, n) in &rows {
        if *n > 1 {
            dup += 1;
        }
        if !seen.insert(receipt.clone()) {
            continue;
        }
        if let Some((want, at)) = sent.get(receipt) {
            if want != invoice {
                wrong_invoice += 1;
            }
            lat.push((*paid_at - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    // In send order too: a backlog shows as latency growing through the run.
    let mut by_order: Vec<(usize, f64)> = vec![];
    for (receipt, _, paid_at, _) in &rows {
        if let (Some((_, at)), Ok(i)) = (sent.get(receipt), receipt[1..].parse::<usize>()) {
            by_order.push((
                i,
                (*paid_at - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0,
            ));
        }
    }
    by_order.sort_by_key(|(i, _)| *i);
    by_order.dedup_by_key(|(i, _)| *i);
    let tenth = (by_order.len() / 10).max(1);
    let deciles: Vec<String> = by_order
        .chunks(tenth)
        .map(|c| {
            let mut v: Vec<f64> = c.iter().map(|(_, l)| *l).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            format!("{:.0}", percentile(&v, 0.5))
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let lost = total - seen.len();
    println!(
        "c2b_latency: {total} confirmations at {rate}/s for {secs}s (sent in {send_secs:.1}s, all Paid after {drained:.1}s)"
    );
    if !lat.is_empty() {
        println!(
            "callback -> invoice Paid: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&lat, 0.50),
            percentile(&lat, 0.90),
            percentile(&lat, 0.99),
            lat[lat.len() - 1]
        );
    }
    println!("p50 per tenth of the run, ms: {}", deciles.join(" "));
    println!(
        "non-200 answers {not_ok}, credited in M-Pesa {credited}, lost {lost}, duplicated {dup}, on the wrong invoice {wrong_invoice}"
    );
    app.shared.shutdown.cancel();
    Ok(())
}
