//! wa-parser over real HTTP, Postgres and NATS, with Core (partners, tokens) and
//! CRM (buildings, the intake operation) running, the WhatsApp Cloud API stand-in
//! receiving replies, and Africa's Talking's callback in its real form encoding.

#[path = "api/buildings.rs"]
mod buildings;
#[path = "api/leads.rs"]
mod leads;
#[path = "api/sms.rs"]
mod sms;
#[path = "api/webhook.rs"]
mod webhook;

use std::cell::RefCell;
use std::time::Duration;

use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_standin_whatsapp::{self as wa, Sender, WhatsAppStandIn};
use isp_testkit::{eventually, service, Res, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use svc_wa_parser::Settings;
use uuid::Uuid;

const APP_SECRET: &str = "test-app-secret";
const VERIFY: &str = "test-verify-token";
const SMS_TOKEN: &str = "sms-path-token-4f9c2a";
const PHONE_ID: &str = "106540352242922";
const CLOUD_TOKEN: &str = "cloud-api-token";

thread_local! {
    // A StartFn cannot capture, and the stand-in's port is known only at run
    // time: the test's own thread (services start on it, one after another)
    // hands wa-parser its settings through here.
    static SETTINGS: RefCell<Option<Settings>> = const { RefCell::new(None) };
}

fn services() -> Vec<(ServiceInfo, StartFn)> {
    vec![
        service!(svc_core),
        service!(svc_crm),
        (svc_wa_parser::INFO, |c| {
            let s = SETTINGS.with(|s| s.borrow().clone()).unwrap_or_default();
            Box::pin(svc_wa_parser::start_with(c, s))
        }),
    ]
}

struct World {
    app: TestApp,
    standin: WhatsAppStandIn,
    admin: String,
}

fn settings(standin: &WhatsAppStandIn) -> Settings {
    Settings {
        verify_token: VERIFY.into(),
        app_secret: APP_SECRET.into(),
        cloud_api_url: Some(standin.api_base.clone()),
        cloud_api_token: CLOUD_TOKEN.into(),
        phone_number_id: PHONE_ID.into(),
        sms_path_token: SMS_TOKEN.into(),
        retry_base: Duration::from_millis(200),
        retry_max: Duration::from_secs(1),
        ..Settings::default()
    }
}

async fn world_with(f: impl FnOnce(&mut Settings)) -> World {
    let standin = WhatsAppStandIn::start(CLOUD_TOKEN).await.unwrap();
    let mut s = settings(&standin);
    f(&mut s);
    SETTINGS.with(|c| *c.borrow_mut() = Some(s));
    let app = TestApp::spawn(&services()).await;
    let admin = app.admin_token().await;
    World {
        app,
        standin,
        admin,
    }
}

async fn world() -> World {
    world_with(|_| {}).await
}

fn id(r: &Res) -> String {
    r.body["doc"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {:?} {:?}", r.status, r.body))
        .to_string()
}

async fn wa_scalar<T>(w: &World, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql)
        .fetch_one(&w.app.ctx("wa-parser").pool)
        .await
        .unwrap()
}

/// A partner through Core, once wa-parser's projection holds it with `status`.
async fn partner(w: &World, phone: &str, status: &str) -> String {
    let r = w
        .app
        .post(
            "/api/core/partners",
            &w.admin,
            json!({"fullName": "Grace Caretaker", "phoneNumber": phone, "mpesaNumber": phone, "status": status}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let p = id(&r);
    wait_partner(w, &p, status).await;
    p
}

async fn wait_partner(w: &World, p: &str, status: &str) {
    for service in ["wa-parser", "crm"] {
        assert!(
            w.app.partner_has_status(service, p, status, 15).await,
            "{service} never saw partner {p} as {status}"
        );
    }
}

/// A building in CRM looked after by `partner`, once wa-parser's projection has it.
async fn building(w: &World, partner: &str, name: &str) -> String {
    let r = w
        .app
        .post(
            "/api/crm/buildings",
            &w.admin,
            json!({"name": name, "address": "Ngong Road, Nairobi", "status": "Active", "partner": partner}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let b = id(&r);
    let bid: Uuid = b.parse().unwrap();
    let pool = w.app.ctx("wa-parser").pool.clone();
    let seen = eventually(15, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM buildings WHERE id = $1")
                .bind(bid)
                .fetch_one(&pool)
                .await
                .ok()
                .filter(|n| *n == 1)
        }
    })
    .await;
    assert!(seen.is_some(), "wa-parser never saw building {b}");
    b
}

async fn post_raw(w: &World, body: &[u8], signature: Option<&str>) -> Res {
    let mut req = w
        .app
        .http
        .post(format!("{}/api/wa-parser/whatsapp/webhook", w.app.base))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    Res {
        status,
        body: res.json().await.unwrap_or(Value::Null),
    }
}

/// POSTs a webhook signed with the app secret.
async fn webhook(w: &World, v: &Value) -> Res {
    let body = serde_json::to_vec(v).unwrap();
    let sig = wa::sign(APP_SECRET, &body);
    post_raw(w, &body, Some(&sig)).await
}

async fn text(w: &World, sender: &Sender, msg_id: &str, text: &str) {
    let r = webhook(w, &wa::text_webhook(PHONE_ID, sender, msg_id, text)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// The logged message once its outcome is final (or `want`).
async fn outcome(w: &World, provider_id: &str, want: &[&str]) -> Value {
    let pool = w.app.ctx("wa-parser").pool.clone();
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let token = w.admin.clone();
    let found = eventually(20, || {
        let pool = pool.clone();
        let want = want.clone();
        let token = token.clone();
        async move {
            let id: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM inbound_messages WHERE provider_message_id = $1",
            )
            .bind(provider_id)
            .fetch_optional(&pool)
            .await
            .ok()?;
            let r = w
                .app
                .get(&format!("/api/wa-parser/inboundMessages/{}", id?), &token)
                .await;
            let o = r.body["outcome"].as_str()?.to_string();
            let reply_settled = r.body["replyStatus"] != "Pending";
            (want.contains(&o) && reply_settled).then_some(r.body)
        }
    })
    .await;
    found.unwrap_or_else(|| panic!("message {provider_id} never reached {want:?}"))
}

async fn replies_to(w: &World, recipient: &str, n: usize) -> Vec<wa::Sent> {
    let got = eventually(10, || async {
        let s = w.standin.sent_to(recipient);
        (s.len() >= n).then_some(s)
    })
    .await;
    got.unwrap_or_else(|| {
        panic!(
            "{recipient} did not get {n} replies: {:?}",
            w.standin.sent()
        )
    })
}

async fn crm_lead(w: &World, lead: &str) -> Value {
    let r = w.app.get(&format!("/api/crm/leads/{lead}"), &w.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body
}

async fn crm_leads(w: &World) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM leads")
        .fetch_one(&w.app.ctx("crm").pool)
        .await
        .unwrap()
}
