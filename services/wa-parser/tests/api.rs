//! wa-parser over real HTTP, Postgres and NATS, with Core (partners, tokens) and
//! CRM (buildings, the intake operation) running, the WhatsApp Cloud API stand-in
//! receiving replies, and Africa's Talking's callback in its real form encoding.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_standin_whatsapp::{self as wa, Sender, WhatsAppStandIn};
use isp_testkit::{eventually, Res, TestApp};
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
        (svc_core::INFO, |c| Box::pin(svc_core::start(c))),
        (svc_crm::INFO, |c| Box::pin(svc_crm::start(c))),
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
    let pid: Uuid = p.parse().unwrap();
    for service in ["wa-parser", "crm"] {
        let pool = w.app.ctx(service).pool.clone();
        let seen = eventually(15, || {
            let pool = pool.clone();
            async move {
                let s: Option<String> =
                    sqlx::query_scalar("SELECT status FROM partners WHERE id = $1")
                        .bind(pid)
                        .fetch_optional(&pool)
                        .await
                        .ok()?;
                (s.as_deref() == Some(status)).then_some(())
            }
        })
        .await;
        assert!(seen.is_some(), "{service} never saw partner {p} as {status}");
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
            let id: Option<Uuid> =
                sqlx::query_scalar("SELECT id FROM inbound_messages WHERE provider_message_id = $1")
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
    got.unwrap_or_else(|| panic!("{recipient} did not get {n} replies: {:?}", w.standin.sent()))
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

#[tokio::test]
async fn handshake_answers_the_challenge_only_with_our_token() {
    let w = world().await;
    let get = |q: String| {
        let url = format!("{}/api/wa-parser/whatsapp/webhook?{q}", w.app.base);
        let http = w.app.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let (s, body) = get(format!("hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=1158201444")).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "1158201444"));
    let (s, _) = get("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1".into()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = get(format!("hub.mode=unsubscribe&hub.verify_token={VERIFY}&hub.challenge=1")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = get("hub.challenge=1".into()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn posts_are_authenticated_before_anything_is_stored() {
    let w = world().await;
    let v = wa::text_webhook(PHONE_ID, &Sender::phone("254711000001"), "wamid.sig", "HELP");
    let body = serde_json::to_vec(&v).unwrap();
    let good = wa::sign(APP_SECRET, &body);
    // Missing, wrong secret, garbage, and a body altered after signing.
    assert_eq!(post_raw(&w, &body, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        post_raw(&w, &body, Some(&wa::sign("not-the-secret", &body))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(post_raw(&w, &body, Some("sha256=00")).await.status, StatusCode::UNAUTHORIZED);
    let mut altered = body.clone();
    let at = altered.len() - 10;
    altered[at] ^= 1;
    assert_eq!(post_raw(&w, &altered, Some(&good)).await.status, StatusCode::UNAUTHORIZED);
    // Not JSON, even signed, is not stored either.
    assert_eq!(
        post_raw(&w, b"{oops", Some(&wa::sign(APP_SECRET, b"{oops"))).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await, 0);
    // Statuses are acknowledged and ignored.
    let r = webhook(&w, &wa::status_webhook(PHONE_ID, "wamid.x", "254711000001", "delivered")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await, 0);
    // The good one is.
    assert_eq!(post_raw(&w, &body, Some(&good)).await.status, StatusCode::OK);
    assert_eq!(wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await, 1);
}

#[tokio::test]
async fn an_active_partner_gets_a_lead_and_a_confirmation_once_however_often_delivered() {
    let w = world().await;
    let p = partner(&w, "0711000002", "Active").await;
    let b = building(&w, &p, "Sunrise Apartments").await;
    let me = Sender::phone("254711000002");
    let msg = "LEAD Jane Wanjiku, 0712 345 678, B4";
    let hook = wa::text_webhook(PHONE_ID, &me, "wamid.lead1", msg);
    for _ in 0..3 {
        assert_eq!(webhook(&w, &hook).await.status, StatusCode::OK);
    }
    let m = outcome(&w, "wamid.lead1", &["Lead created"]).await;
    assert_eq!(m["channel"], "WhatsApp");
    assert_eq!(m["sender"], "+254711000002");
    assert_eq!(m["partner"], json!(p));
    assert_eq!(m["rawText"], msg);
    assert_eq!(m["replyStatus"], "Sent");
    let lead = crm_lead(&w, m["lead"].as_str().unwrap()).await;
    assert_eq!(lead["leadSource"], "Partner Referral");
    assert_eq!(lead["referredBy"], json!(p));
    assert_eq!(lead["subscriberName"], "Jane Wanjiku");
    assert_eq!(lead["subscriberPhone"], "+254712345678");
    assert_eq!(lead["notes"], msg);
    let unit = w
        .app
        .get(&format!("/api/crm/buildingUnits/{}", lead["serviceLocation"].as_str().unwrap()), &w.admin)
        .await;
    assert_eq!(unit.body["unitNumber"], "B4");
    assert_eq!(unit.body["building"], json!(b));
    assert_eq!(unit.body["status"], "Lead");

    let replies = replies_to(&w, "254711000002", 1).await;
    let r = &replies[0];
    assert_eq!(r.phone_number_id, PHONE_ID);
    assert_eq!(r.body["messaging_product"], "whatsapp");
    assert!(r.text().contains("Jane Wanjiku") && r.text().contains("B4"), "{}", r.text());
    assert_eq!(m["replyError"], Value::Null);

    // The same referral again (a new message id) is a Duplicate, not a second lead.
    text(&w, &me, "wamid.lead1-again", "lead jane wanjiku, 0712345678, b4").await;
    let d = outcome(&w, "wamid.lead1-again", &["Duplicate"]).await;
    assert_eq!(d["lead"], m["lead"]);
    replies_to(&w, "254711000002", 2).await;
    // Redelivery did nothing more.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(crm_leads(&w).await, 1);
    assert_eq!(w.standin.sent_to("254711000002").len(), 2);
    assert_eq!(wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await, 2);
}

#[tokio::test]
async fn unknown_senders_get_nothing_inactive_partners_are_told_and_admin_reprocesses_once() {
    let w = world().await;
    text(&w, &Sender::phone("254799999999"), "wamid.stranger", "LEAD Jane, 0712345678, B4").await;
    let m = outcome(&w, "wamid.stranger", &["Unknown sender"]).await;
    assert!(m["reason"].as_str().unwrap().contains("+254799999999"), "{m}");
    assert_eq!(m["replyStatus"], Value::Null);

    let p = partner(&w, "0711000003", "Prospect").await;
    building(&w, &p, "Baraka Court").await;
    text(&w, &Sender::phone("254711000003"), "wamid.prospect", "LEAD Jane Wanjiku, 0712345678, B4").await;
    let m = outcome(&w, "wamid.prospect", &["Inactive partner"]).await;
    let reply = replies_to(&w, "254711000003", 1).await;
    assert!(reply[0].text().contains("not active"), "{}", reply[0].text());
    assert_eq!(crm_leads(&w).await, 0);
    assert!(w.standin.sent_to("254799999999").is_empty(), "an unknown number gets no reply");

    // The log: Admin and Sales Agent read it; nobody writes it; others do not read it.
    let (sales, _) = w.app.staff_token("Sales Agent").await;
    let list = w.app.get("/api/wa-parser/inboundMessages?sort=-receivedAt", &sales).await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    assert_eq!(list.body["totalDocs"], 2);
    let filtered = w
        .app
        .get("/api/wa-parser/inboundMessages?where[outcome][equals]=Unknown%20sender", &sales)
        .await;
    assert_eq!(filtered.body["totalDocs"], 1);
    let (billing, _) = w.app.staff_token("Billing Manager").await;
    assert_eq!(w.app.get("/api/wa-parser/inboundMessages", &billing).await.status, StatusCode::FORBIDDEN);
    let mid = m["id"].as_str().unwrap().to_string();
    // No write routes exist, for any role or service scope.
    let writer = w.app.service_token("x", &["wa-parser.inboundMessages.create", "wa-parser.inboundMessages.update", "wa-parser.inboundMessages.delete"]);
    for token in [&w.admin, &writer] {
        assert_eq!(
            w.app.post("/api/wa-parser/inboundMessages", token, json!({"channel": "SMS"})).await.status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            w.app.patch(&format!("/api/wa-parser/inboundMessages/{mid}"), token, json!({"outcome": "Lead created"})).await.status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(w.app.delete(&format!("/api/wa-parser/inboundMessages/{mid}"), token).await.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let one = w.app.get(&format!("/api/wa-parser/inboundMessages/{mid}"), &sales).await;
    assert_eq!(one.body["outcome"], "Inactive partner");
    assert_eq!(w.app.get(&format!("/api/wa-parser/inboundMessages/{mid}"), &billing).await.status, StatusCode::FORBIDDEN);

    // Activated, then re-processed by an Admin (not a Sales Agent): a lead, once.
    let reprocess = format!("/api/wa-parser/inboundMessages/{mid}/reprocess");
    assert_eq!(w.app.post(&reprocess, &sales, json!({})).await.status, StatusCode::FORBIDDEN);
    let r = w.app.patch(&format!("/api/core/partners/{p}"), &w.admin, json!({"status": "Active"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    wait_partner(&w, &p, "Active").await;
    let r = w.app.post(&reprocess, &w.admin, json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let m = outcome(&w, "wamid.prospect", &["Lead created"]).await;
    assert_eq!(m["previousOutcome"], "Inactive partner");
    assert!(m["reprocessedAt"].is_string());
    assert_eq!(crm_leads(&w).await, 1);
    let r = w.app.post(&reprocess, &w.admin, json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    // A message that succeeded cannot be re-processed.
    let ok_id = Uuid::new_v4();
    assert_eq!(
        w.app.post(&format!("/api/wa-parser/inboundMessages/{ok_id}/reprocess"), &w.admin, json!({})).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn buildings_are_inferred_matched_tolerantly_or_asked_for() {
    let w = world().await;
    let p = partner(&w, "0711000004", "Active").await;
    let sunrise = building(&w, &p, "Sunrise Apartments").await;
    building(&w, &p, "Baraka Court").await;
    let me = Sender::phone("254711000004");

    // Two buildings and none named: asked, with the list.
    text(&w, &me, "wamid.b1", "LEAD Jane Wanjiku, 0712345678, B4").await;
    let m = outcome(&w, "wamid.b1", &["Parse error"]).await;
    let reply = &replies_to(&w, "254711000004", 1).await[0];
    assert!(reply.text().contains("Sunrise Apartments") && reply.text().contains("Baraka Court"), "{}", reply.text());
    assert!(m["reason"].as_str().unwrap().contains("No building named"));

    // An unknown building: asked too.
    text(&w, &me, "wamid.b2", "LEAD Jane Wanjiku, 0712345678, B4, Kilimani Heights").await;
    outcome(&w, "wamid.b2", &["Parse error"]).await;
    let reply = &replies_to(&w, "254711000004", 2).await[1];
    assert!(reply.text().contains("Kilimani Heights") && reply.text().contains("Baraka Court"), "{}", reply.text());

    // A small typo, other case and spacing: matched.
    text(&w, &me, "wamid.b3", "Jina: Jane Wanjiku\nSimu: 0712345678\nNyumba: B4\nJengo:  sunrse   apartments").await;
    let m = outcome(&w, "wamid.b3", &["Lead created"]).await;
    let lead = crm_lead(&w, m["lead"].as_str().unwrap()).await;
    let unit = w
        .app
        .get(&format!("/api/crm/buildingUnits/{}", lead["serviceLocation"].as_str().unwrap()), &w.admin)
        .await;
    assert_eq!(unit.body["building"], json!(sunrise));

    // Bad messages are answered with what was wrong and the format; HELP with the format.
    text(&w, &me, "wamid.b4", "LEAD Jane Wanjiku, 0712, ").await;
    let m = outcome(&w, "wamid.b4", &["Parse error"]).await;
    assert!(m["reason"].as_str().unwrap().contains("\"0712\""), "{m}");
    let reply = &replies_to(&w, "254711000004", 4).await[3];
    assert!(reply.text().contains("LEAD Jane Wanjiku, 0712345678, B4"), "{}", reply.text());
    text(&w, &me, "wamid.b5", "help").await;
    outcome(&w, "wamid.b5", &["Help"]).await;
    let reply = &replies_to(&w, "254711000004", 5).await[4];
    assert!(reply.text().contains("Jina"), "{}", reply.text());
    // A photo: please send text.
    let r = webhook(&w, &wa::image_webhook(PHONE_ID, &me, "wamid.b6")).await;
    assert_eq!(r.status, StatusCode::OK);
    outcome(&w, "wamid.b6", &["Not text"]).await;
    let reply = &replies_to(&w, "254711000004", 6).await[5];
    assert!(reply.text().contains("text message"), "{}", reply.text());
    assert_eq!(crm_leads(&w).await, 1);
}

#[tokio::test]
async fn a_business_scoped_id_is_learned_with_the_number_and_matched_later() {
    let w = world().await;
    let p = partner(&w, "0711000005", "Active").await;
    building(&w, &p, "Sunrise Apartments").await;
    // Only the BSUID, before we know it: unknown.
    text(&w, &Sender::bsuid("US.1349000000000001"), "wamid.u0", "LEAD Ann Njeri, 0722000111, 3").await;
    outcome(&w, "wamid.u0", &["Unknown sender"]).await;
    // Both: learned.
    text(&w, &Sender::both("254711000005", "US.1349000000000001"), "wamid.u1", "LEAD Jane Wanjiku, 0712345678, 1").await;
    outcome(&w, "wamid.u1", &["Lead created"]).await;
    let learned: i64 = wa_scalar(&w, "SELECT count(*) FROM partner_bsuids WHERE bsuid = 'US.1349000000000001'").await;
    assert_eq!(learned, 1);
    // Only the BSUID now: the partner; the reply goes to the BSUID.
    text(&w, &Sender::bsuid("US.1349000000000001"), "wamid.u2", "LEAD Peter Otieno, 0733000222, 2").await;
    let m = outcome(&w, "wamid.u2", &["Lead created"]).await;
    assert_eq!(m["partner"], json!(p));
    let r = replies_to(&w, "US.1349000000000001", 1).await;
    assert!(r[0].text().contains("Peter Otieno"));
    // Neither: unknown, logged.
    let mut v = wa::text_webhook(PHONE_ID, &Sender::default(), "wamid.u3", "LEAD X Y, 0712345678, 1");
    v["entry"][0]["changes"][0]["value"]["contacts"] = json!([]);
    assert_eq!(webhook(&w, &v).await.status, StatusCode::OK);
    let m = outcome(&w, "wamid.u3", &["Unknown sender"]).await;
    assert!(m["reason"].as_str().unwrap().contains("neither"), "{m}");
    assert_eq!(crm_leads(&w).await, 2);
}

/// CRM behind a switch: while off it answers 503 like a proxy in front of a CRM
/// that is down; while on it forwards to the platform.
struct Switch {
    base: String,
    target: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn switch() -> Switch {
    use axum::extract::{Request, State};
    use axum::response::IntoResponse;
    let target: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    async fn forward(
        State(t): State<Arc<Mutex<Option<String>>>>,
        req: Request,
    ) -> axum::response::Response {
        let Some(to) = t.lock().unwrap().clone() else {
            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "CRM is down").into_response();
        };
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let mut out = reqwest::Client::new().request(parts.method, format!("{to}{}", parts.uri));
        for (k, v) in &parts.headers {
            if k != "host" {
                out = out.header(k, v);
            }
        }
        let res = out.body(bytes).send().await.unwrap();
        let status = res.status();
        (status, res.bytes().await.unwrap()).into_response()
    }
    let app = axum::Router::new().fallback(forward).with_state(target.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Switch { base, target, task }
}

#[tokio::test]
async fn crm_down_keeps_the_message_and_it_is_processed_once_when_crm_returns() {
    let sw = switch().await;
    let crm = sw.base.clone();
    let w = world_with(|s| s.crm_url = Some(crm)).await;
    let p = partner(&w, "0711000006", "Active").await;
    building(&w, &p, "Sunrise Apartments").await;
    text(&w, &Sender::phone("254711000006"), "wamid.down", "LEAD Jane Wanjiku, 0712345678, B4").await;
    let m = outcome(&w, "wamid.down", &["CRM unavailable"]).await;
    assert!(m["reason"].as_str().unwrap().contains("CRM unavailable"), "{m}");
    assert!(w.standin.sent_to("254711000006").is_empty(), "no reply while pending");
    // Retried with backoff while down.
    let tries = eventually(15, || async {
        let n: i32 = wa_scalar(&w, "SELECT attempts FROM inbound_messages").await;
        (n >= 3).then_some(n)
    })
    .await;
    assert!(tries.is_some(), "not retried");
    assert_eq!(crm_leads(&w).await, 0);

    *sw.target.lock().unwrap() = Some(w.app.base.clone());
    let m = outcome(&w, "wamid.down", &["Lead created"]).await;
    let r = replies_to(&w, "254711000006", 1).await;
    assert!(r[0].text().contains("Jane Wanjiku"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(crm_leads(&w).await, 1);
    assert_eq!(w.standin.sent_to("254711000006").len(), 1);
    assert!(m["lead"].is_string());
}

async fn sms(w: &World, token: &str, fields: &[(&str, &str)]) -> Res {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let res = w
        .app
        .http
        .post(format!("{}/api/wa-parser/sms/{token}", w.app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    Res {
        status,
        body: res.json().await.unwrap_or(Value::Null),
    }
}

#[tokio::test]
async fn inbound_sms_is_authenticated_by_path_token_stored_once_and_answered_through_notify() {
    let w = world_with(|s| s.sms_shortcode = Some("22384".into())).await;
    let p = partner(&w, "0711000007", "Active").await;
    building(&w, &p, "Sunrise Apartments").await;
    let form = [
        ("from", "+254711000007"),
        ("to", "22384"),
        ("text", "Name: Jane Wanjiku\nPhone: 0712345678\nUnit: B4"),
        ("date", "2026-12-01 10:00:00"),
        ("id", "ATXid_0a1b2c"),
        ("linkId", "SampleLinkId123"),
        ("networkCode", "63902"),
    ];
    assert_eq!(sms(&w, "wrong-token", &form).await.status, StatusCode::NOT_FOUND);
    let r = sms(&w, SMS_TOKEN, &[("text", "x")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, ["from", "id"]);
    // To another number than our shortcode: acknowledged, ignored.
    let mut other = form;
    other[1] = ("to", "40404");
    other[4] = ("id", "ATXid_other");
    assert_eq!(sms(&w, SMS_TOKEN, &other).await.status, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(sms(&w, SMS_TOKEN, &form).await.status, StatusCode::OK);
    }
    let m = outcome(&w, "ATXid_0a1b2c", &["Lead created"]).await;
    assert_eq!(m["channel"], "SMS");
    assert_eq!(m["replyStatus"], "Requested");
    assert_eq!(wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await, 1);
    assert_eq!(crm_leads(&w).await, 1);
    // The reply is a request to Notify, in wa-parser's outbox.
    let ev: Value = wa_scalar::<Value>(
        &w,
        "SELECT payload FROM outbox WHERE type = 'notification.requested.waParser'",
    )
    .await;
    assert_eq!(ev["data"]["channel"], "sms");
    assert_eq!(ev["data"]["recipient"], "+254711000007");
    assert_eq!(ev["data"]["category"], "transactional");
    assert_eq!(ev["data"]["reference"], m["id"]);
    assert!(ev["data"]["body"].as_str().unwrap().contains("Jane Wanjiku"));
    assert!(w.standin.sent().is_empty(), "SMS replies do not go to WhatsApp");
}

#[tokio::test]
async fn the_sms_allowlist_refuses_other_sources() {
    let w = world_with(|s| s.sms_allowlist = vec!["10.0.0.0/8".parse().unwrap()]).await;
    let r = sms(&w, SMS_TOKEN, &[("from", "+254711000008"), ("id", "ATXid_1"), ("text", "HELP")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await, 0);
}
