//! Webhook-to-lead latency: 1,000 signed WhatsApp webhooks from Active partners,
//! sent at 50 per second, against core, crm and wa-parser on real Postgres and
//! NATS (the test harness's private database and nats-server). Latency is from
//! the moment a webhook is sent to the commit of its lead in CRM
//! (`leads.created_at`), and to the partner's reply being recorded.
//!
//! ```sh
//! ISP_TEST_PG_ADMIN_URL=postgres://postgres@127.0.0.1:55432/postgres ISP_TEST_NATS_BIN=$(command -v nats-server) \
//!   cargo run --release -p svc-wa-parser --example webhook_latency [-- <messages> <per second>]
//! ```

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_standin_whatsapp::{self as wa, Sender, WhatsAppStandIn};
use isp_testkit::{eventually, TestApp};
use serde_json::json;
use uuid::Uuid;

const SECRET: &str = "bench-app-secret";
const PHONE_ID: &str = "106540352242922";
const PARTNERS: usize = 20;

fn services() -> Vec<(ServiceInfo, StartFn)> {
    vec![
        (svc_core::INFO, |c| Box::pin(svc_core::start(c))),
        (svc_crm::INFO, |c| Box::pin(svc_crm::start(c))),
        (svc_wa_parser::INFO, |c| {
            let s = SETTINGS.with(|s| s.borrow().clone()).unwrap_or_default();
            Box::pin(svc_wa_parser::start_with(c, s))
        }),
    ]
}

thread_local! {
    // StartFn cannot capture; the stand-in's port is known at run time only.
    static SETTINGS: std::cell::RefCell<Option<svc_wa_parser::Settings>> = const { std::cell::RefCell::new(None) };
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let rate: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);

    let standin = WhatsAppStandIn::start("bench-token").await?;
    SETTINGS.with(|c| {
        *c.borrow_mut() = Some(svc_wa_parser::Settings {
            app_secret: SECRET.into(),
            cloud_api_url: Some(standin.api_base.clone()),
            cloud_api_token: "bench-token".into(),
            phone_number_id: PHONE_ID.into(),
            ..Default::default()
        })
    });
    let app = TestApp::spawn(&services()).await;
    let admin = app.admin_token().await;

    let mut senders = vec![];
    let mut partners = vec![];
    for i in 0..PARTNERS {
        let phone = format!("07110{i:05}");
        let r = app
            .post("/api/core/partners", &admin, json!({"fullName": format!("Partner {i}"), "phoneNumber": phone, "mpesaNumber": phone, "status": "Active"}))
            .await;
        anyhow::ensure!(r.status.is_success(), "partner: {:?}", r.body);
        partners.push(r.body["doc"]["id"].as_str().unwrap().to_string());
        senders.push(Sender::phone(&format!("2547110{i:05}")));
    }
    // CRM accepts a building's partner (and a referral) once its projection has it.
    let crm_pool = app.ctx("crm").pool.clone();
    let crm_ready = eventually(30, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM partners WHERE status = 'Active'")
            .fetch_one(&crm_pool)
            .await
            .ok()?;
        (n as usize == PARTNERS).then_some(())
    })
    .await;
    anyhow::ensure!(crm_ready.is_some(), "CRM never saw the partners");
    for (i, p) in partners.iter().enumerate() {
        let b = app
            .post("/api/crm/buildings", &admin, json!({"name": format!("Building {i}"), "address": "Nairobi", "status": "Active", "partner": p}))
            .await;
        anyhow::ensure!(b.status.is_success(), "building: {:?}", b.body);
    }
    let pool = app.ctx("wa-parser").pool.clone();
    let ready = eventually(30, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM buildings b JOIN partners p ON p.id = b.partner WHERE p.status = 'Active'")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n as usize == PARTNERS).then_some(())
    })
    .await;
    anyhow::ensure!(ready.is_some(), "projections not ready");

    println!("sending {total} webhooks at {rate}/s");
    let mut sent_at: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = vec![];
    let started = std::time::Instant::now();
    for n in 0..total {
        tick.tick().await;
        let id = format!("wamid.bench.{n}");
        let text = format!("LEAD Bench Lead{n}, 0712{:06}, U{n}", n);
        let body = serde_json::to_vec(&wa::text_webhook(PHONE_ID, &senders[n % PARTNERS], &id, &text))?;
        let sig = wa::sign(SECRET, &body);
        sent_at.insert(id, Utc::now());
        let req = app
            .http
            .post(format!("{}/api/wa-parser/whatsapp/webhook", app.base))
            .header("x-hub-signature-256", sig)
            .header("content-type", "application/json")
            .body(body);
        tasks.push(tokio::spawn(async move { req.send().await.map(|r| r.status()) }));
    }
    let mut bad = 0;
    for t in tasks {
        if !t.await?.map(|s| s.is_success()).unwrap_or(false) {
            bad += 1;
        }
    }
    println!("sent in {:.1} s ({bad} webhook answers not 2xx)", started.elapsed().as_secs_f64());

    let done = eventually(300, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages WHERE outcome NOT IN ('Pending', 'CRM unavailable') AND reply_status IS DISTINCT FROM 'Pending'")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n as usize >= total).then_some(())
    })
    .await;
    anyhow::ensure!(done.is_some(), "not all messages were processed");

    let rows: Vec<(String, String, Option<Uuid>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT provider_message_id, outcome, lead, processed_at FROM inbound_messages",
    )
    .fetch_all(&pool)
    .await?;
    let leads: HashMap<Uuid, DateTime<Utc>> = sqlx::query_as::<_, (Uuid, DateTime<Utc>)>("SELECT id, created_at FROM leads")
        .fetch_all(&app.ctx("crm").pool)
        .await?
        .into_iter()
        .collect();
    let mut to_lead = vec![];
    let mut to_done = vec![];
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for (id, outcome, lead, processed) in rows {
        *outcomes.entry(outcome).or_default() += 1;
        let sent = sent_at[&id];
        if let Some(created) = lead.and_then(|l| leads.get(&l)) {
            to_lead.push((*created - sent).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        if let Some(p) = processed {
            to_done.push((p - sent).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    to_lead.sort_by(f64::total_cmp);
    to_done.sort_by(f64::total_cmp);
    println!("outcomes: {outcomes:?}; CRM leads: {}; replies at the stand-in: {}", leads.len(), standin.sent().len());
    for (name, v) in [("webhook -> lead committed in CRM", &to_lead), ("webhook -> outcome recorded", &to_done)] {
        if v.is_empty() {
            continue;
        }
        println!(
            "{name}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
            v.len(),
            percentile(v, 0.50),
            percentile(v, 0.99),
            v[v.len() - 1]
        );
    }
    Ok(())
}
