//! Support over real HTTP, Postgres and NATS. Other services' events (Billing's
//! subscribers and invoices, NOC's resources and Zabbix events, Notify's reports)
//! are published onto JetStream by the tests themselves, as those services would.

#[path = "api/access.rs"]
mod access;
#[path = "api/bulk.rs"]
mod bulk;
#[path = "api/contacts.rs"]
mod contacts;
#[path = "api/messages.rs"]
mod messages;
#[path = "api/templates.rs"]
mod templates;
#[path = "api/tickets.rs"]
mod tickets;
#[path = "api/zabbix.rs"]
mod zabbix;

use isp_events::payloads::*;
use isp_events::{CloudEvent, EventPayload};
use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_testkit::{eventually, service, Res, TestApp};
use uuid::Uuid;

fn core() -> (ServiceInfo, StartFn) {
    service!(svc_core)
}
fn support() -> (ServiceInfo, StartFn) {
    service!(svc_support)
}

async fn app() -> TestApp {
    TestApp::spawn(&[core(), support()]).await
}

async fn publish_event(app: &TestApp, subject: &str, ev: &CloudEvent, msg_id: &str) {
    let js = async_nats::jetstream::new(app.shared.nats.clone());
    isp_events::ensure_stream(&js).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject.to_string(), headers, ev.to_json().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Publishes as the producing service would; returns the event.
async fn publish<P: EventPayload>(app: &TestApp, source: &str, payload: &P) -> CloudEvent {
    let ev = CloudEvent::new(source, payload).unwrap();
    publish_event(app, &P::nats_subject(), &ev, &ev.id.to_string()).await;
    ev
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.scalar(sql).await
}

/// Waits until `sql` (a count) reaches `n`.
async fn wait_count(app: &TestApp, sql: &str, n: i64) {
    let pool = app.admin_pool().await;
    let ok = eventually(20, || {
        let pool = pool.clone();
        async move {
            let c: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            (c == n).then_some(())
        }
    })
    .await;
    let last: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    assert!(ok.is_some(), "{sql}: wanted {n}, last saw {last}");
}

/// Waits until Support has handled (or deliberately ignored) an event.
async fn processed(app: &TestApp, ev: &CloudEvent) {
    wait_count(
        app,
        &format!(
            "SELECT count(*) FROM support.processed_events WHERE event_id = '{}'",
            ev.id
        ),
        1,
    )
    .await;
}

fn subscriber(plan: Uuid, phone: &str) -> SubscriberSnapshot {
    SubscriberSnapshot {
        id: Uuid::now_v7(),
        account_number: format!("ACC-{}", &Uuid::new_v4().simple().to_string()[..6]),
        first_name: "Amina".into(),
        last_name: "Otieno".into(),
        mpesa_number: "+254711000111".into(),
        contact_phone: Some(phone.into()),
        email: Some("amina@example.com".into()),
        status: isp_events::options::SubscriberStatus::Active,
        service_plan: plan,
        billing_cycle: isp_events::options::BillingCycle::Monthly,
        next_due_date: None,
        address_notes: None,
        service_location: None,
        building: None,
        lead_id: None,
        updated_at: chrono::Utc::now(),
    }
}

async fn known_subscriber(app: &TestApp, s: &SubscriberSnapshot) {
    let ev = publish(app, "billing", &SubscriberCreated(s.clone())).await;
    processed(app, &ev).await;
}

fn paths(r: &Res) -> Vec<String> {
    let mut p = r.error_paths();
    p.sort();
    p
}

/// An active Support Agent, known to Support's staff projection.
async fn agent(app: &TestApp) -> (String, String) {
    let (token, id) = app.staff_token("Support Agent").await;
    wait_count(
        app,
        &format!("SELECT count(*) FROM support.staff WHERE id = '{id}'"),
        1,
    )
    .await;
    (token, id)
}
