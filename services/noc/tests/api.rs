//! NOC over real HTTP, Postgres, NATS and FreeRADIUS. Billing's events are
//! published onto JetStream by the tests themselves, as Billing would.

use std::time::Duration;

use isp_events::payloads::*;
use isp_events::{CloudEvent, EventPayload};
use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_testkit::freeradius::{FreeRadiusParams, TestFreeRadius};
use isp_testkit::{eventually, TestApp};
use md5::{Digest, Md5};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn core() -> (ServiceInfo, StartFn) {
    (svc_core::INFO, |c| Box::pin(svc_core::start(c)))
}
fn noc() -> (ServiceInfo, StartFn) {
    (svc_noc::INFO, |c| Box::pin(svc_noc::start(c)))
}

async fn app() -> TestApp {
    TestApp::spawn(&[core(), noc()]).await
}

async fn publish<P: EventPayload>(app: &TestApp, source: &str, payload: &P) {
    let js = async_nats::jetstream::new(app.shared.nats.clone());
    isp_events::ensure_stream(&js).await.unwrap();
    let ev = CloudEvent::new(source, payload).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", ev.id.to_string().as_str());
    js.publish_with_headers(P::nats_subject(), headers, ev.to_json().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn subscriber(id: Uuid, account: &str, plan: Uuid) -> SubscriberSnapshot {
    SubscriberSnapshot {
        id,
        account_number: account.into(),
        first_name: "Amina".into(),
        last_name: "Otieno".into(),
        mpesa_number: "+254711000111".into(),
        contact_phone: Some("+254722000222".into()),
        email: Some("amina@example.com".into()),
        status: "Pending Installation".into(),
        service_plan: plan,
        billing_cycle: "Monthly".into(),
        next_due_date: None,
        address_notes: Some("Use the back gate".into()),
        service_location: None,
        building: None,
        lead_id: None,
        updated_at: chrono::Utc::now(),
    }
}

fn status_change(id: Uuid, account: &str) -> SubscriberStatusChange {
    SubscriberStatusChange {
        subscriber_id: id,
        account_number: account.into(),
        reason: None,
        at: chrono::Utc::now(),
    }
}

async fn scalar_i64(app: &TestApp, sql: &str) -> i64 {
    let pool = app.admin_pool().await;
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&pool)
        .await
        .unwrap()
}

/// A subnet (through the API) and a plan in Core that draws static IPs from it,
/// once NOC has projected the plan.
async fn static_plan(
    app: &TestApp,
    admin: &str,
    network: &str,
    up: u32,
    down: u32,
) -> (String, String) {
    let s = app
        .post(
            "/api/noc/ipSubnets",
            admin,
            json!({"network": network, "description": "Static pool"}),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{:?}", s.body);
    let subnet = s.body["doc"]["id"].as_str().unwrap().to_string();
    let p = app
        .post(
            "/api/core/plans",
            admin,
            json!({"name": format!("Static {network}"), "downloadSpeed": down, "uploadSpeed": up, "price": 5000,
                   "billingCycle": "Monthly", "ipAssignmentType": "Static-Public", "staticIpPool": subnet}),
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.body);
    let plan = p.body["doc"]["id"].as_str().unwrap().to_string();
    wait_projected(
        app,
        &format!("SELECT count(*) FROM noc.plans WHERE id = '{plan}'"),
    )
    .await;
    (subnet, plan)
}

async fn wait_projected(app: &TestApp, sql: &str) {
    let pool = app.admin_pool().await;
    let ok = eventually(15, || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            (n > 0).then_some(())
        }
    })
    .await;
    assert!(ok.is_some(), "never projected: {sql}");
}

/// The automatic installation order of a subscriber, once it exists.
async fn installation_order(app: &TestApp, token: &str, sub: Uuid) -> Value {
    eventually(15, || async {
        let r = app
            .get(
                &format!("/api/noc/workOrders?where[subscriber][equals]={sub}"),
                token,
            )
            .await;
        r.body["docs"].as_array().and_then(|d| d.first().cloned())
    })
    .await
    .expect("installation order")
}

/// Creates an Active Technician in Core and waits for NOC's staff projection.
async fn technician(app: &TestApp) -> (String, String) {
    let (token, id) = app.staff_token("Technician").await;
    wait_projected(
        app,
        &format!("SELECT count(*) FROM noc.staff WHERE id = '{id}'"),
    )
    .await;
    (token, id)
}

/// A stand-in NAS: answers each Disconnect/CoA-Request with an ACK after checking
/// its Request Authenticator with the shared secret; reports what it received.
async fn stand_in_nas(
    secret: &'static str,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(u8, bool, Vec<(u8, Vec<u8>)>)>,
) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let pkt = &buf[..n];
            // RFC 5176 section 2.3: MD5(Code|Id|Length|16 zero octets|Attributes|Secret).
            let mut zeroed = pkt.to_vec();
            zeroed[4..20].fill(0);
            let mut h = Md5::new();
            h.update(&zeroed);
            h.update(secret.as_bytes());
            let valid = h.finalize().as_slice() == &pkt[4..20];
            let mut attrs = vec![];
            let mut i = 20;
            while i + 2 <= n {
                let (t, l) = (pkt[i], pkt[i + 1] as usize);
                attrs.push((t, pkt[i + 2..i + l].to_vec()));
                i += l;
            }
            let _ = tx.send((pkt[0], valid, attrs));
            if !valid {
                continue; // a NAS silently drops what it cannot authenticate
            }
            let mut resp = vec![pkt[0] + 1, pkt[1], 0, 20];
            let mut h = Md5::new();
            h.update(&resp);
            h.update(&pkt[4..20]);
            h.update(secret.as_bytes());
            resp.extend_from_slice(&h.finalize());
            let _ = sock.send_to(&resp, peer).await;
        }
    });
    (port, rx)
}

fn attr_str(attrs: &[(u8, Vec<u8>)], t: u8) -> Option<String> {
    attrs
        .iter()
        .find(|(a, _)| *a == t)
        .map(|(_, v)| String::from_utf8_lossy(v).to_string())
}

#[tokio::test]
async fn provisioning_suspension_and_reactivation_against_real_freeradius() {
    let app = app().await;
    let admin = app.admin_token().await;
    let fr = TestFreeRadius::start(FreeRadiusParams::for_database(
        &app.db.host,
        app.db.port,
        &app.db.name,
    ))
    .await
    .expect("FreeRADIUS");
    let (_, plan) = static_plan(&app, &admin, "198.51.100.0/29", 5, 10).await;
    let (tech, tech_id) = technician(&app).await;

    // Billing creates the subscriber; the event arrives twice.
    let sub = Uuid::now_v7();
    let snap = subscriber(sub, "ACC-000101", plan.parse().unwrap());
    publish(&app, "billing", &SubscriberCreated(snap.clone())).await;
    publish(&app, "billing", &SubscriberCreated(snap.clone())).await;
    let order = installation_order(&app, &admin, sub).await;
    assert_eq!(order["orderType"], "New Installation");
    assert_eq!(order["status"], "Pending");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        scalar_i64(
            &app,
            &format!("SELECT count(*) FROM noc.work_orders WHERE subscriber = '{sub}'")
        )
        .await,
        1,
        "exactly one installation order per subscriber"
    );
    let order_id = order["id"].as_str().unwrap();

    // Until assigned, the technician sees nothing.
    let r = app.get("/api/noc/workOrders", &tech).await;
    assert_eq!(r.body["totalDocs"], 0);
    assert_eq!(
        app.get(&format!("/api/noc/workOrders/{order_id}"), &tech)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{order_id}"),
            &admin,
            json!({"assignedTo": tech_id, "status": "Scheduled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // The technician sees their order with the subscriber's name, phone and directions.
    let r = app.get("/api/noc/workOrders", &tech).await;
    assert_eq!(r.body["totalDocs"], 1);
    let doc = &r.body["docs"][0];
    assert_eq!(doc["subscriberName"], "Amina Otieno");
    assert_eq!(doc["subscriberPhone"], "+254722000222");
    assert_eq!(doc["addressNotes"], "Use the back gate");
    // ... but nothing else of the subscriber, and may change only the status.
    assert_eq!(
        app.get(&format!("/api/noc/subscribers/{sub}"), &tech)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{order_id}"),
            &tech,
            json!({"notes": "done"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_path(), Some("notes"));

    // Completing the installation provisions the subscriber.
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{order_id}"),
            &tech,
            json!({"status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["doc"]["completedAt"].is_string());
    let s = app
        .get(&format!("/api/noc/subscribers/{sub}"), &admin)
        .await
        .body;
    assert_eq!(s["radiusUsername"], "ACC-000101");
    let password = s["radiusPassword"].as_str().unwrap().to_string();
    assert!(password.len() >= 16);
    let ip = app
        .get(
            &format!("/api/noc/ipAddresses/{}", s["assignedIp"].as_str().unwrap()),
            &admin,
        )
        .await
        .body;
    assert_eq!(ip["ipAddress"], "198.51.100.1");
    assert_eq!(ip["status"], "Assigned");
    assert_eq!(ip["assignedTo"], sub.to_string());
    // At rest, NOC's own table holds ciphertext only.
    let stored: String =
        sqlx::query_scalar("SELECT radius_password FROM noc.subscribers WHERE id = $1")
            .bind(sub)
            .fetch_one(&app.admin_pool().await)
            .await
            .unwrap();
    assert!(!stored.contains(&password));
    // Completed orders stay completed.
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{order_id}"),
            &tech,
            json!({"status": "In Progress"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // subscriber.provisioned reaches the bus (Billing sets Active from it).
    let pool = app.admin_pool().await;
    let published = eventually(10, || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM noc.outbox WHERE type = 'subscriber.provisioned' AND published_at IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            (n == 1).then_some(())
        }
    })
    .await;
    assert!(published.is_some(), "subscriber.provisioned published");

    // FreeRADIUS accepts the subscriber with the plan's rate limit and the static IP.
    let reply = fr.auth("ACC-000101", &password).await.unwrap();
    assert!(reply.accepted, "{reply:?}\n{}", fr.log());
    assert_eq!(reply.attr("Mikrotik-Rate-Limit"), Some("5M/10M"));
    assert_eq!(reply.attr("Framed-IP-Address"), Some("198.51.100.1"));
    assert!(
        !fr.auth("ACC-000101", "wrong-password")
            .await
            .unwrap()
            .accepted
    );
    assert!(!fr.auth("ACC-999999", &password).await.unwrap().accepted);

    // The subscriber goes online through a router the NOC knows as a NAS.
    let (nas_port, mut received) = stand_in_nas("nas-secret-1").await;
    let r = app
        .post(
            "/api/noc/resources",
            &admin,
            json!({"resourceName": "Core router", "resourceType": "Router", "status": "Deployed",
                   "managementIp": "127.0.0.1", "nasSecret": "nas-secret-1", "dynauthPort": nas_port}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let acct = fr
        .accounting(&[
            ("Acct-Status-Type", "Start"),
            ("Acct-Session-Id", "81000001"),
            ("User-Name", "ACC-000101"),
            ("NAS-IP-Address", "127.0.0.1"),
            ("Framed-IP-Address", "198.51.100.1"),
        ])
        .await
        .unwrap();
    assert_eq!(acct.code, "Accounting-Response", "{}", fr.log());

    // Billing suspends: RADIUS refuses, and the NAS is told to disconnect the session.
    publish(
        &app,
        "billing",
        &SubscriberSuspended(status_change(sub, "ACC-000101")),
    )
    .await;
    let (code, valid, attrs) = tokio::time::timeout(Duration::from_secs(15), received.recv())
        .await
        .expect("a Disconnect-Request reaches the NAS")
        .unwrap();
    assert_eq!(code, 40, "Disconnect-Request");
    assert!(
        valid,
        "the Request Authenticator verifies with the shared secret"
    );
    assert_eq!(attr_str(&attrs, 1).as_deref(), Some("ACC-000101"));
    assert_eq!(attr_str(&attrs, 44).as_deref(), Some("81000001"));
    assert!(
        attrs.iter().any(|(t, v)| *t == 80 && v.len() == 16),
        "Message-Authenticator"
    );
    let answered = eventually(10, || {
        let pool = pool.clone();
        async move {
            let r: Option<String> = sqlx::query_scalar(
                "SELECT result FROM noc.dynauth_requests WHERE acct_session_id = '81000001'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            r.filter(|r| r != "Pending")
        }
    })
    .await;
    assert_eq!(answered.as_deref(), Some("ACK"));
    let reply = fr.auth("ACC-000101", &password).await.unwrap();
    assert!(!reply.accepted, "suspended users are rejected");
    let s = app
        .get(&format!("/api/noc/subscribers/{sub}"), &admin)
        .await
        .body;
    assert_eq!(s["status"], "Suspended");

    // Paid up: accepted again.
    publish(
        &app,
        "billing",
        &SubscriberReactivated(status_change(sub, "ACC-000101")),
    )
    .await;
    let back = eventually(10, || async {
        let r = fr.auth("ACC-000101", &password).await.unwrap();
        r.accepted.then_some(r)
    })
    .await;
    assert!(back.is_some(), "reactivated users are accepted again");
}
