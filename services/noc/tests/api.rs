//! NOC over real HTTP, Postgres, NATS and FreeRADIUS. Billing's events are
//! published onto JetStream by the tests themselves, as Billing would.

#[path = "api/projections.rs"]
mod projections;

use std::time::Duration;

use isp_events::payloads::*;
use isp_testkit::fixtures::{status_change, subscriber_snapshot};
use isp_testkit::freeradius::{FreeRadiusParams, TestFreeRadius};
use isp_testkit::{eventually, service, TestApp};
use md5::{Digest, Md5};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

async fn app() -> TestApp {
    TestApp::spawn(&[service!(svc_core), service!(svc_noc)]).await
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
    // Core accepts the pool once NOC's ipSubnet.created has reached it.
    let body = json!({"name": format!("Static {network}"), "downloadSpeed": down, "uploadSpeed": up, "price": 5000,
                      "billingCycle": "Monthly", "ipAssignmentType": "Static-Public", "staticIpPool": subnet});
    let p = eventually(15, || async {
        let p = app.post("/api/core/plans", admin, body.clone()).await;
        (p.status == StatusCode::CREATED).then_some(p)
    })
    .await
    .expect("Core never accepted the NOC subnet as a static pool");
    let plan = p.body["doc"]["id"].as_str().unwrap().to_string();
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.plans WHERE id = '{plan}'"
    ))
    .await;
    (subnet, plan)
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
    app.wait_for(&format!("SELECT count(*) FROM noc.staff WHERE id = '{id}'"))
        .await;
    (token, id)
}

/// How a stand-in NAS answers.
#[derive(Clone, Copy)]
enum Answer {
    Ack,
    /// NAK with this Error-Cause.
    Nak(u32),
    /// Never answers.
    Silent,
}

/// A stand-in NAS on 127.0.0.1 that ACKs; see [`stand_in_nas_at`].
async fn stand_in_nas(secret: &'static str) -> (u16, NasInbox) {
    stand_in_nas_at("127.0.0.1", secret, Answer::Ack).await
}

/// A stand-in NAS on `ip`: checks each Disconnect/CoA-Request's Request
/// Authenticator with the shared secret, reports what it received and answers as
/// told (ACK or NAK code for the request, with a correct Response Authenticator).
async fn stand_in_nas_at(ip: &str, secret: &'static str, answer: Answer) -> (u16, NasInbox) {
    let sock = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
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
            let (code, reply_attrs) = match answer {
                Answer::Silent => continue,
                Answer::Ack => (pkt[0] + 1, vec![]),
                Answer::Nak(cause) => {
                    let mut a = vec![101u8, 6];
                    a.extend_from_slice(&cause.to_be_bytes());
                    (pkt[0] + 2, a)
                }
            };
            let len = (20 + reply_attrs.len()) as u16;
            let mut resp = vec![code, pkt[1]];
            resp.extend_from_slice(&len.to_be_bytes());
            let mut h = Md5::new();
            h.update(&resp);
            h.update(&pkt[4..20]);
            h.update(&reply_attrs);
            h.update(secret.as_bytes());
            resp.extend_from_slice(&h.finalize());
            resp.extend_from_slice(&reply_attrs);
            let _ = sock.send_to(&resp, peer).await;
        }
    });
    (port, rx)
}

type NasInbox = tokio::sync::mpsc::UnboundedReceiver<(u8, bool, Vec<(u8, Vec<u8>)>)>;

/// The next request a stand-in NAS received: valid, for `session`; its code and
/// attributes.
async fn next_request(rx: &mut NasInbox, session: &str) -> (u8, Vec<(u8, Vec<u8>)>) {
    let (code, valid, attrs) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a request reaches the NAS")
        .unwrap();
    assert!(valid, "the Request Authenticator verifies");
    assert_eq!(attr_str(&attrs, 44).as_deref(), Some(session));
    (code, attrs)
}

/// A Router resource that is the NAS at `ip`, answering dynauth on `port`.
async fn router_nas(app: &TestApp, token: &str, ip: &str, secret: &str, port: u16) -> String {
    let r = app
        .post(
            "/api/noc/resources",
            token,
            json!({"resourceName": format!("Router {ip}"), "resourceType": "Router", "status": "Deployed",
                   "managementIp": ip, "nasSecret": secret, "dynauthPort": port}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["doc"]["id"].as_str().unwrap().to_string()
}

/// An open session in radacct, as FreeRADIUS writes it on Accounting-Start.
async fn open_session(app: &TestApp, user: &str, nas_ip: &str, session: &str) {
    let pool = app.admin_pool().await;
    sqlx::query(
        "INSERT INTO radius.radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime)
         VALUES ($1, md5($1 || $2), $2, $3::inet, now())",
    )
    .bind(session)
    .bind(user)
    .bind(nas_ip)
    .execute(&pool)
    .await
    .unwrap();
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
    let snap = subscriber_snapshot(sub, "ACC-000101", plan.parse().unwrap());
    app.publish("billing", &SubscriberCreated(snap.clone()))
        .await;
    app.publish("billing", &SubscriberCreated(snap.clone()))
        .await;
    let order = installation_order(&app, &admin, sub).await;
    assert_eq!(order["orderType"], "New Installation");
    assert_eq!(order["status"], "Pending");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.scalar::<i64>(&format!(
            "SELECT count(*) FROM noc.work_orders WHERE subscriber = '{sub}'"
        ))
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
    // FreeRADIUS's post-auth log keeps who, when and the answer, never the
    // password that was tried.
    let logged: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT username, pass, reply FROM radius.radpostauth")
            .fetch_all(&app.admin_pool().await)
            .await
            .unwrap();
    for answer in ["Access-Accept", "Access-Reject"] {
        assert!(
            logged
                .iter()
                .any(|(u, _, r)| u == "ACC-000101" && r.as_deref() == Some(answer)),
            "{answer} logged: {logged:?}"
        );
    }
    for (_, pass, _) in &logged {
        let pass = pass.as_deref().unwrap_or_default();
        assert!(
            !pass.contains(&password) && !pass.contains("wrong-password"),
            "radpostauth.pass holds a password: {logged:?}"
        );
    }

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
    app.publish(
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
    let reactivation = status_change(sub, "ACC-000101");
    app.publish("billing", &SubscriberReactivated(reactivation.clone()))
        .await;
    let back = eventually(10, || async {
        let r = fr.auth("ACC-000101", &password).await.unwrap();
        r.accepted.then_some(r)
    })
    .await;
    assert!(back.is_some(), "reactivated users are accepted again");

    // A suspension older than that reactivation, delivered late (a redelivery),
    // changes nothing: the account stays enabled and no Disconnect is sent.
    let mut stale = status_change(sub, "ACC-000101");
    stale.at = reactivation.at - chrono::Duration::seconds(30);
    let late = app.publish("billing", &SubscriberSuspended(stale)).await;
    app.processed("noc", late).await;
    let reply = fr.auth("ACC-000101", &password).await.unwrap();
    assert!(
        reply.accepted,
        "a stale suspension must not block a paying customer"
    );
    let s = app
        .get(&format!("/api/noc/subscribers/{sub}"), &admin)
        .await
        .body;
    assert_eq!(s["status"], "Active");
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM noc.dynauth_requests WHERE kind = 'Disconnect'")
            .await,
        1,
        "only the real suspension disconnected"
    );

    // New plan speeds: the reply changes and the NAS gets a CoA-Request for the
    // open session, carrying the new Mikrotik-Rate-Limit.
    let r = app
        .patch(
            &format!("/api/core/plans/{plan}"),
            &admin,
            json!({"uploadSpeed": 7, "downloadSpeed": 20}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (code, valid, attrs) = tokio::time::timeout(Duration::from_secs(15), received.recv())
        .await
        .expect("a CoA-Request reaches the NAS")
        .unwrap();
    assert_eq!(code, 43, "CoA-Request");
    assert!(valid);
    let vsa = attrs
        .iter()
        .find(|(t, _)| *t == 26)
        .map(|(_, v)| v.clone())
        .expect("Vendor-Specific");
    assert_eq!(&vsa[..4], &14988u32.to_be_bytes(), "MikroTik");
    assert_eq!(vsa[4], 8, "Mikrotik-Rate-Limit");
    assert_eq!(&vsa[6..], b"7M/20M");
    let reply = fr.auth("ACC-000101", &password).await.unwrap();
    assert_eq!(reply.attr("Mikrotik-Rate-Limit"), Some("7M/20M"));
}

#[tokio::test]
async fn fifty_concurrent_completions_on_forty_addresses_assign_forty_distinct_ips_and_refuse_ten()
{
    let app = app().await;
    let admin = app.admin_token().await;
    let (subnet, plan) = static_plan(&app, &admin, "203.0.113.0/26", 2, 8).await;
    // 62 usable addresses: reserve 22, leaving a pool of 40.
    let list = app
        .get(
            &format!("/api/noc/ipAddresses?where[subnet][equals]={subnet}&limit=100"),
            &admin,
        )
        .await;
    assert_eq!(list.body["totalDocs"], 62);
    for doc in list.body["docs"].as_array().unwrap().iter().take(22) {
        let r = app
            .patch(
                &format!("/api/noc/ipAddresses/{}", doc["id"].as_str().unwrap()),
                &admin,
                json!({"status": "Reserved"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let subs: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    for (i, id) in subs.iter().enumerate() {
        app.publish(
            "billing",
            &SubscriberCreated(subscriber_snapshot(
                *id,
                &format!("ACC-{:06}", 500 + i),
                plan.parse().unwrap(),
            )),
        )
        .await;
    }
    app.wait_for("SELECT CASE WHEN count(*) >= 50 THEN 1 ELSE 0 END::int8 FROM noc.work_orders")
        .await;
    let orders: Vec<String> = {
        let pool = app.admin_pool().await;
        sqlx::query_scalar("SELECT id::text FROM noc.work_orders")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    assert_eq!(orders.len(), 50);

    let results = futures::future::join_all(orders.iter().map(|id| {
        let app = &app;
        let admin = &admin;
        async move {
            app.patch(
                &format!("/api/noc/workOrders/{id}"),
                admin,
                json!({"status": "Completed"}),
            )
            .await
        }
    }))
    .await;
    let ok = results
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let full: Vec<_> = results
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .collect();
    assert_eq!(
        ok,
        40,
        "{:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(full.len(), 10);
    assert!(full[0].body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("No Available address"));

    // Invariants: 40 distinct addresses, both sides of every link agree, and the
    // refused completions left nothing behind.
    let pool = app.admin_pool().await;
    let q = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        q("SELECT count(*) FROM noc.ip_addresses WHERE status = 'Assigned'").await,
        40
    );
    assert_eq!(
        q("SELECT count(DISTINCT assigned_to) FROM noc.ip_addresses WHERE status = 'Assigned'")
            .await,
        40
    );
    assert_eq!(
        q("SELECT count(*) FROM noc.ip_addresses WHERE status = 'Available'").await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM noc.ip_addresses WHERE status = 'Reserved'").await,
        22
    );
    assert_eq!(
        q("SELECT count(*) FROM noc.subscribers WHERE assigned_ip IS NOT NULL").await,
        40
    );
    assert_eq!(
        q("SELECT count(*) FROM noc.subscribers s JOIN noc.ip_addresses a ON a.id = s.assigned_ip AND a.assigned_to = s.id").await,
        40
    );
    assert_eq!(
        q("SELECT count(*) FROM noc.subscribers WHERE provisioned_at IS NOT NULL").await,
        40
    );
    assert_eq!(
        q("SELECT count(*) FROM noc.work_orders WHERE status = 'Completed'").await,
        40
    );
    assert_eq!(
        q("SELECT count(*) FROM noc.work_orders WHERE status = 'Pending'").await,
        10
    );
    assert_eq!(q("SELECT count(*) FROM radius.radcheck").await, 40);
    assert_eq!(q("SELECT count(DISTINCT value) FROM radius.radreply WHERE attribute = 'Framed-IP-Address'").await, 40);
    assert_eq!(
        q("SELECT count(*) FROM radius.radreply r JOIN noc.subscribers s ON s.radius_username = r.username
           JOIN noc.ip_addresses a ON a.id = s.assigned_ip WHERE r.attribute = 'Framed-IP-Address' AND r.value = a.ip_address").await,
        40
    );
    assert_eq!(
        q("SELECT count(*) FROM noc.outbox WHERE type = 'subscriber.provisioned'").await,
        40
    );
}

#[tokio::test]
async fn ipam_subnets_are_validated_normalized_non_overlapping_and_addresses_follow_status_rules() {
    let app = app().await;
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    assert_eq!(
        app.get("/api/noc/ipSubnets", &sales).await.status,
        StatusCode::FORBIDDEN
    );

    let r = app
        .post(
            "/api/noc/ipSubnets",
            &ne,
            json!({"network": "10.30.20.9/24", "description": "Block A"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["network"], "10.30.20.0/24");
    let subnet = r.body["doc"]["id"].as_str().unwrap().to_string();
    let addrs = app
        .get(
            &format!("/api/noc/ipAddresses?where[subnet][equals]={subnet}&limit=1"),
            &ne,
        )
        .await;
    assert_eq!(addrs.body["totalDocs"], 254, "usable hosts only");

    for (network, status, path) in [
        ("10.30.20.0/24", StatusCode::CONFLICT, "network"),
        ("10.30.20.128/25", StatusCode::CONFLICT, "network"),
        ("10.30.16.0/20", StatusCode::CONFLICT, "network"),
        ("not-a-network", StatusCode::BAD_REQUEST, "network"),
        ("10.0.0.0/8", StatusCode::BAD_REQUEST, "network"),
        ("2001:db8::/120", StatusCode::BAD_REQUEST, "network"),
    ] {
        let r = app
            .post(
                "/api/noc/ipSubnets",
                &ne,
                json!({"network": network, "description": "x"}),
            )
            .await;
        assert_eq!(r.status, status, "{network}: {:?}", r.body);
        assert_eq!(r.error_path(), Some(path));
    }
    let r = app
        .post(
            "/api/noc/ipSubnets",
            &ne,
            json!({"network": "10.0.0.0/8", "description": "x"}),
        )
        .await;
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("too large"));
    // The 64-character bound is on what is sent (the documents' maxLength), the
    // spaces that trimming would drop included; within it they are trimmed.
    let padded = format!("10.30.21.0/24{}", " ".repeat(52));
    let r = app
        .post(
            "/api/noc/ipSubnets",
            &ne,
            json!({"network": padded, "description": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("network")),
        "{:?}",
        r.body
    );
    let r = app
        .post(
            "/api/noc/ipSubnets",
            &ne,
            json!({"network": padded.trim_end_matches(' ').to_string() + "   ", "description": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["network"], "10.30.21.0/24");
    let padded_id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .delete(&format!("/api/noc/ipSubnets/{padded_id}"), &ne)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .post("/api/noc/ipSubnets", &ne, json!({"description": "x"}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("network"))
    );
    let r = app
        .patch(
            &format!("/api/noc/ipSubnets/{subnet}"),
            &ne,
            json!({"network": "10.40.0.0/24"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Addresses: inside their subnet, never Assigned by hand.
    let r = app
        .post(
            "/api/noc/ipAddresses",
            &ne,
            json!({"ipAddress": "10.99.0.1", "subnet": subnet}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("ipAddress"))
    );
    let r = app
        .post(
            "/api/noc/ipAddresses",
            &ne,
            json!({"ipAddress": "10.30.20.1", "subnet": subnet}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("ipAddress"))
    );
    for (ip, why) in [
        ("10.30.20.0", "network address"),
        ("10.30.20.255", "broadcast address"),
    ] {
        let r = app
            .post(
                "/api/noc/ipAddresses",
                &ne,
                json!({"ipAddress": ip, "subnet": subnet}),
            )
            .await;
        assert_eq!(
            (r.status, r.error_path()),
            (StatusCode::BAD_REQUEST, Some("ipAddress")),
            "{ip}: {:?}",
            r.body
        );
        assert!(r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(why));
    }
    let r = app
        .post(
            "/api/noc/ipAddresses",
            &ne,
            json!({"ipAddress": "banana", "subnet": subnet}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("ipAddress"))
    );
    let one = app
        .get(
            "/api/noc/ipAddresses?where[ipAddress][equals]=10.30.20.7",
            &ne,
        )
        .await
        .body["docs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .patch(
            &format!("/api/noc/ipAddresses/{one}"),
            &ne,
            json!({"status": "Assigned"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("status"))
    );
    let r = app
        .patch(
            &format!("/api/noc/ipAddresses/{one}"),
            &ne,
            json!({"assignedTo": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::FORBIDDEN, Some("assignedTo"))
    );
    let r = app
        .patch(
            &format!("/api/noc/ipAddresses/{one}"),
            &ne,
            json!({"status": "Reserved"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["doc"]["status"], "Reserved");

    // A subnet deletes with its addresses while none is assigned.
    let r = app
        .delete(&format!("/api/noc/ipSubnets/{subnet}"), &ne)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM noc.ip_addresses")
            .await,
        0
    );
}

#[tokio::test]
async fn resources_normalize_and_deduplicate_macs_validate_links_hide_the_nas_secret_and_publish_events(
) {
    let app = app().await;
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (support, _) = app.staff_token("Support Agent").await;
    let building = Uuid::now_v7();
    app.publish(
        "crm",
        &BuildingCreated(BuildingSnapshot {
            id: building,
            name: "Sunrise Apartments".into(),
            address: "Moi Avenue".into(),
            status: isp_events::options::BuildingStatus::Active,
            partner: None,
            updated_at: chrono::Utc::now(),
        }),
    )
    .await;
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.buildings WHERE id = '{building}'"
    ))
    .await;

    let r = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "Roof router", "resourceType": "Router", "status": "Deployed", "serialNumber": "SN-1",
                   "macAddress": "aa-bb-cc-00-11-22", "location": building, "managementIp": " 10.0.0.1 ", "nasSecret": "s3cret!",
                   "assignedTo": {"relationTo": "buildings", "value": building}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let router = r.body["doc"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["doc"]["macAddress"], "AA:BB:CC:00:11:22");
    assert_eq!(r.body["doc"]["managementIp"], "10.0.0.1");
    assert_eq!(r.body["doc"]["nasSecret"], "s3cret!");
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.nas WHERE nasname = '10.0.0.1'")
            .await,
        1
    );

    // Support Agents may look, but never see the shared secret.
    let seen = app
        .get(&format!("/api/noc/resources/{router}"), &support)
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    assert!(seen.body.get("nasSecret").is_none());
    // Nor does a service reading resources, unless its token names the field.
    let reader = app.service_token("test", &["noc.resources.read"]);
    let seen = app
        .get(&format!("/api/noc/resources/{router}"), &reader)
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    assert!(seen.body.get("nasSecret").is_none());
    assert_eq!(seen.body["managementIp"], "10.0.0.1");
    let named = app.service_token(
        "test",
        &["noc.resources.read", "noc.resources.nasSecret.read"],
    );
    let seen = app
        .get(&format!("/api/noc/resources/{router}"), &named)
        .await;
    assert_eq!(seen.body["nasSecret"], "s3cret!");
    assert_eq!(
        app.post(
            "/api/noc/resources",
            &support,
            json!({"resourceName": "x", "resourceType": "Cable", "status": "In Stock"})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );

    for (body, status, path) in [
        (
            json!({"macAddress": "AABB.CC00.1122"}),
            StatusCode::CONFLICT,
            "macAddress",
        ),
        (
            json!({"serialNumber": "SN-1"}),
            StatusCode::CONFLICT,
            "serialNumber",
        ),
        (
            json!({"macAddress": "nope"}),
            StatusCode::BAD_REQUEST,
            "macAddress",
        ),
        (
            json!({"location": Uuid::now_v7()}),
            StatusCode::BAD_REQUEST,
            "location",
        ),
        (
            json!({"assignedTo": {"relationTo": "plans", "value": building}}),
            StatusCode::BAD_REQUEST,
            "assignedTo",
        ),
        (
            json!({"assignedTo": {"relationTo": "subscribers", "value": Uuid::now_v7()}}),
            StatusCode::BAD_REQUEST,
            "assignedTo",
        ),
        (
            json!({"managementIp": "10.0.0.1"}),
            StatusCode::BAD_REQUEST,
            "managementIp",
        ),
        (
            json!({"resourceType": "Modem"}),
            StatusCode::BAD_REQUEST,
            "resourceType",
        ),
    ] {
        let mut b =
            json!({"resourceName": "Antenna", "resourceType": "Antenna", "status": "In Stock"});
        for (k, v) in body.as_object().unwrap() {
            b[k] = v.clone();
        }
        let r = app.post("/api/noc/resources", &ne, b.clone()).await;
        assert_eq!(
            (r.status, r.error_path()),
            (status, Some(path)),
            "{b}: {:?}",
            r.body
        );
    }

    // One NAS per management IP: a second Router with the same IP (however
    // written) is refused, on create and on update.
    let r = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "Spare router", "resourceType": "Router", "status": "In Stock",
                   "managementIp": "10.0.0.1", "nasSecret": "other"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("managementIp")),
        "{:?}",
        r.body
    );
    let r = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "Spare router", "resourceType": "Router", "status": "In Stock",
                   "managementIp": "10.0.0.2"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let spare = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/noc/resources/{spare}"),
            &ne,
            json!({"managementIp": " 10.0.0.1"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("managementIp")),
        "{:?}",
        r.body
    );

    // resource.created / updated / deleted reach the bus for CRM.
    let r = app
        .patch(
            &format!("/api/noc/resources/{router}"),
            &ne,
            json!({"status": "Faulty"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .delete(&format!("/api/noc/resources/{spare}"), &ne)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let pool = app.admin_pool().await;
    let events = eventually(10, || {
        let pool = pool.clone();
        async move {
            let t: Vec<(String, Value)> = sqlx::query_as(
                "SELECT type, payload->'data' FROM noc.outbox WHERE type LIKE 'resource.%' AND published_at IS NOT NULL ORDER BY created_at",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            (t.len() == 4).then_some(t)
        }
    })
    .await
    .expect("four resource events published");
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "resource.created",
            "resource.created",
            "resource.updated",
            "resource.deleted"
        ]
    );
    assert_eq!(events[3].1["id"], spare.as_str());
}

#[tokio::test]
async fn technical_subscriber_fields_follow_the_rules_and_billing_fields_are_read_only() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (billing, _) = app.staff_token("Billing Manager").await;
    let (_, plan) = static_plan(&app, &admin, "192.0.2.0/29", 3, 6).await;
    let sub = Uuid::now_v7();
    app.publish(
        "billing",
        &SubscriberCreated(subscriber_snapshot(
            sub,
            "ACC-000777",
            plan.parse().unwrap(),
        )),
    )
    .await;
    installation_order(&app, &admin, sub).await;
    let path = format!("/api/noc/subscribers/{sub}");

    let s = app.get(&path, &ne).await.body;
    assert_eq!(s["accountNumber"], "ACC-000777");
    assert_eq!(s["radiusUsername"], "ACC-000777");
    assert_eq!(s["connectionType"], "Static IP");
    assert_eq!(s["status"], "Pending Installation");
    assert!(
        s["radiusPassword"].as_str().unwrap().len() >= 16,
        "Network Engineers see the password"
    );
    assert_eq!(app.get(&path, &billing).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.post(
            "/api/noc/subscribers",
            &admin,
            json!({"connectionType": "PPPoE"})
        )
        .await
        .status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    for field in [
        "firstName",
        "status",
        "accountNumber",
        "radiusUsername",
        "radiusPassword",
    ] {
        let r = app.patch(&path, &ne, json!({field: "x"})).await;
        assert_eq!(
            (r.status, r.error_path()),
            (StatusCode::FORBIDDEN, Some(field))
        );
    }
    let r = app
        .patch(
            &path,
            &ne,
            json!({"macAddress": "00-1a-2b-3c-4d-5e", "connectionType": "PPPoE"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["macAddress"], "00:1A:2B:3C:4D:5E");
    let r = app
        .patch(&path, &ne, json!({"macAddress": "00-1a-2b"}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("macAddress"))
    );
    let r = app
        .patch(&path, &ne, json!({"connectionType": "Fibre"}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("connectionType"))
    );

    let antenna = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "Dish", "resourceType": "Antenna", "status": "Deployed"}),
        )
        .await
        .body["doc"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app.patch(&path, &ne, json!({"router": antenna})).await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("router"))
    );
    let router = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "R1", "resourceType": "Router", "status": "Deployed"}),
        )
        .await
        .body["doc"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app.patch(&path, &ne, json!({"router": router})).await;
    assert_eq!(r.status, StatusCode::OK);

    // Explicit assignment of an address keeps both sides linked; a taken one is 409.
    let addrs = app
        .get("/api/noc/ipAddresses?sort=createdAt&limit=2", &ne)
        .await
        .body;
    let (a1, a2) = (
        addrs["docs"][0]["id"].as_str().unwrap(),
        addrs["docs"][1]["id"].as_str().unwrap(),
    );
    let r = app.patch(&path, &ne, json!({"assignedIp": a1})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        app.get(&format!("/api/noc/ipAddresses/{a1}"), &ne)
            .await
            .body["assignedTo"],
        sub.to_string()
    );
    let other = Uuid::now_v7();
    app.publish(
        "billing",
        &SubscriberCreated(subscriber_snapshot(
            other,
            "ACC-000778",
            plan.parse().unwrap(),
        )),
    )
    .await;
    installation_order(&app, &admin, other).await;
    let r = app
        .patch(
            &format!("/api/noc/subscribers/{other}"),
            &ne,
            json!({"assignedIp": a1}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("assignedIp"))
    );
    // One MAC per subscriber, compared after normalizing.
    let r = app
        .patch(
            &format!("/api/noc/subscribers/{other}"),
            &ne,
            json!({"macAddress": "001A.2B3C.4D5E"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("macAddress")),
        "{:?}",
        r.body
    );
    let r = app.patch(&path, &ne, json!({"assignedIp": a2})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        app.get(&format!("/api/noc/ipAddresses/{a1}"), &ne)
            .await
            .body["status"],
        "Available"
    );
    assert_eq!(
        app.get(&format!("/api/noc/ipAddresses/{a2}"), &ne)
            .await
            .body["status"],
        "Assigned"
    );
    let r = app.delete(&format!("/api/noc/ipAddresses/{a2}"), &ne).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // Billing's later snapshot updates the read-only copy.
    let mut snap = subscriber_snapshot(sub, "ACC-000777", plan.parse().unwrap());
    snap.first_name = "Amina Wanjiru".into();
    snap.updated_at = chrono::Utc::now();
    app.publish("billing", &SubscriberUpdated(snap)).await;
    let renamed = eventually(10, || async {
        (app.get(&path, &ne).await.body["firstName"] == "Amina Wanjiru").then_some(())
    })
    .await;
    assert!(renamed.is_some());
    // The technical change was published for Billing and Support.
    app.wait_for("SELECT count(*) FROM noc.outbox WHERE type = 'subscriber.network_updated'")
        .await;
}

#[tokio::test]
async fn work_orders_go_to_active_technicians_only() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (ne, ne_id) = app.staff_token("Network Engineer").await;
    let (_, tech_id) = technician(&app).await;
    let (other_tech, _) = technician(&app).await;
    let (_, plan) = static_plan(&app, &admin, "192.0.2.64/29", 1, 2).await;
    let sub = Uuid::now_v7();
    app.publish(
        "billing",
        &SubscriberCreated(subscriber_snapshot(
            sub,
            "ACC-000900",
            plan.parse().unwrap(),
        )),
    )
    .await;
    installation_order(&app, &admin, sub).await;
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.staff WHERE id = '{ne_id}'"
    ))
    .await;

    // subscriber.created arriving after a newer subscriber.updated still opens the
    // one installation order.
    let late = Uuid::now_v7();
    let created = subscriber_snapshot(late, "ACC-000901", plan.parse().unwrap());
    let mut updated = created.clone();
    updated.updated_at = created.updated_at + chrono::Duration::seconds(5);
    app.publish("billing", &SubscriberUpdated(updated)).await;
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.subscribers WHERE id = '{late}'"
    ))
    .await;
    app.publish("billing", &SubscriberCreated(created)).await;
    assert_eq!(
        installation_order(&app, &ne, late).await["orderType"],
        "New Installation"
    );

    let r = app
        .post(
            "/api/noc/workOrders",
            &ne,
            json!({"orderType": "Repair", "subscriber": sub, "assignedTo": ne_id}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("assignedTo"))
    );
    let r = app
        .post(
            "/api/noc/workOrders",
            &ne,
            json!({"orderType": "Repair", "subscriber": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("subscriber"))
    );
    // Provisioning cannot be skipped: no installation order is born Completed, and
    // a completed order does not become one.
    let r = app
        .post(
            "/api/noc/workOrders",
            &ne,
            json!({"orderType": "New Installation", "subscriber": sub, "status": "Completed"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("status")),
        "{:?}",
        r.body
    );
    let r = app
        .post(
            "/api/noc/workOrders",
            &ne,
            json!({"orderType": "Site Survey", "subscriber": sub, "status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(r.body["doc"]["completedAt"].is_string());
    let survey = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{survey}"),
            &ne,
            json!({"orderType": "New Installation"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("orderType")),
        "{:?}",
        r.body
    );
    assert_eq!(
        app.scalar::<i64>(&format!(
            "SELECT count(*) FROM noc.subscribers WHERE id = '{sub}' AND provisioned_at IS NULL"
        ))
        .await,
        1
    );

    let r = app.post("/api/noc/workOrders", &ne, json!({"orderType": "Repair", "subscriber": sub, "assignedTo": tech_id, "notes": "Loose cable"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["status"], "Pending");
    let repair = r.body["doc"]["id"].as_str().unwrap().to_string();

    // Another technician can neither see nor change it.
    assert_eq!(
        app.get(&format!("/api/noc/workOrders/{repair}"), &other_tech)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.patch(
            &format!("/api/noc/workOrders/{repair}"),
            &other_tech,
            json!({"status": "Completed"})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(
            "/api/noc/workOrders",
            &other_tech,
            json!({"orderType": "Repair", "subscriber": sub})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );

    // A deactivated technician cannot be given new orders.
    let r = app
        .patch(
            &format!("/api/core/staff/{tech_id}"),
            &admin,
            json!({"status": "Inactive"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.staff WHERE id = '{tech_id}' AND status = 'Inactive'"
    ))
    .await;
    let r = app
        .post(
            "/api/noc/workOrders",
            &ne,
            json!({"orderType": "Site Survey", "subscriber": sub, "assignedTo": tech_id}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("assignedTo"))
    );
}

#[tokio::test]
async fn deactivation_removes_the_radius_account_and_releases_the_static_ip_and_plan_changes_update_the_rate(
) {
    let app = app().await;
    let admin = app.admin_token().await;
    let (_, plan) = static_plan(&app, &admin, "192.0.2.128/29", 5, 10).await;
    let sub = Uuid::now_v7();
    app.publish(
        "billing",
        &SubscriberCreated(subscriber_snapshot(
            sub,
            "ACC-000321",
            plan.parse().unwrap(),
        )),
    )
    .await;
    let order = installation_order(&app, &admin, sub).await;
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{}", order["id"].as_str().unwrap()),
            &admin,
            json!({"status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000321'")
            .await,
        2
    );

    // New speeds on the plan rewrite the rate limit.
    let r = app
        .patch(
            &format!("/api/core/plans/{plan}"),
            &admin,
            json!({"downloadSpeed": 20, "uploadSpeed": 7}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    app.wait_for("SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000321' AND attribute = 'Mikrotik-Rate-Limit' AND value = '7M/20M'").await;

    // Online through a router the NOC knows as a NAS.
    let (nas_port, mut received) = stand_in_nas("nas-secret-2").await;
    router_nas(&app, &admin, "127.0.0.1", "nas-secret-2", nas_port).await;
    open_session(&app, "ACC-000321", "127.0.0.1", "82000001").await;
    app.publish(
        "billing",
        &SubscriberDeactivated(status_change(sub, "ACC-000321")),
    )
    .await;
    let (code, valid, attrs) = tokio::time::timeout(Duration::from_secs(15), received.recv())
        .await
        .expect("a Disconnect-Request reaches the NAS")
        .unwrap();
    assert_eq!((code, valid), (40, true), "a valid Disconnect-Request");
    assert_eq!(attr_str(&attrs, 44).as_deref(), Some("82000001"));
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.subscribers WHERE id = '{sub}' AND status = 'Deactivated'"
    ))
    .await;
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.radcheck WHERE username = 'ACC-000321'")
            .await,
        0
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000321'")
            .await,
        0
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM noc.ip_addresses WHERE status = 'Assigned'")
            .await,
        0
    );
    assert_eq!(
        app.scalar::<i64>(&format!(
            "SELECT count(*) FROM noc.subscribers WHERE id = '{sub}' AND assigned_ip IS NULL"
        ))
        .await,
        1
    );
    // Billing learns that the address is gone, in an event it can order by `at`.
    let pool = app.admin_pool().await;
    let last: Value = sqlx::query_scalar(
        "SELECT payload->'data' FROM noc.outbox WHERE type = 'subscriber.network_updated'
         ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(last["subscriberId"], sub.to_string());
    assert!(last["assignedIp"].is_null(), "{last}");
    assert!(last["at"].is_string(), "{last}");
}

#[tokio::test]
async fn zabbix_webhook_needs_the_token_and_publishes_each_event_once() {
    let app = app().await;
    let token =
        std::fs::read_to_string(app.shared.config.data_dir.join("keys/zabbix-webhook.token"))
            .unwrap();
    let send = |auth: Option<String>, body: Value| {
        let app = &app;
        async move {
            let mut req = app
                .http
                .post(format!("{}/api/noc/zabbix/webhook", app.base))
                .json(&body);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let res = req.send().await.unwrap();
            (
                res.status(),
                res.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let problem = json!({"eventId": "4242", "eventValue": "1", "eventName": "High latency on Roof antenna",
        "severity": "High", "recoveryEventId": "{EVENT.RECOVERY.ID}", "hostName": "roof-antenna-1", "hostIp": "10.0.0.9", "triggerId": "77"});
    assert_eq!(
        send(None, problem.clone()).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(Some("Bearer wrong".into()), problem.clone()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let bearer = format!("Bearer {}", token.trim());
    assert_eq!(
        send(Some(bearer.clone()), problem.clone()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(Some(bearer.clone()), problem.clone()).await.0,
        StatusCode::OK
    );
    let (status, body) = send(Some(bearer.clone()), json!({"eventValue": "1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mut recovery = problem.clone();
    recovery["eventValue"] = json!("0");
    recovery["recoveryEventId"] = json!("4250");
    assert_eq!(send(Some(bearer), recovery).await.0, StatusCode::OK);

    let pool = app.admin_pool().await;
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT type, payload FROM noc.outbox WHERE type LIKE 'network.%' ORDER BY created_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, "network.problem");
    assert_eq!(rows[1].0, "network.recovered");
    let data = |v: &Value| v.get("data").cloned().unwrap_or_else(|| v.clone());
    assert_eq!(data(&rows[0].1)["eventId"], "4242");
    assert_eq!(data(&rows[0].1)["host"], "roof-antenna-1");
    assert_eq!(data(&rows[1].1)["recoveryOf"], "4242");
}

#[tokio::test]
async fn zabbix_updates_are_classified_before_problems_and_every_answer_names_the_ticket() {
    let app = app().await;
    let token =
        std::fs::read_to_string(app.shared.config.data_dir.join("keys/zabbix-webhook.token"))
            .unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let send = |body: Value| {
        let (app, bearer) = (&app, bearer.clone());
        async move {
            let res = app
                .http
                .post(format!("{}/api/noc/zabbix/webhook", app.base))
                .header("authorization", bearer)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let problem = json!({"eventId": "5150", "eventValue": "1", "eventName": "Link down", "severity": "Average",
        "updateStatus": "0", "eventSource": "0", "hostName": "core-rtr-1", "hostIp": "10.0.0.1"});
    let (status, body) = send(problem.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tags"]["__zbx_isp_ticket_id"], "NET-5150");
    assert!(body["tags"]["__zbx_isp_ticketlink"]
        .as_str()
        .unwrap()
        .ends_with("/api/support/tickets?where[ticketID][equals]=NET-5150"));
    // An acknowledgement carries eventValue 1 like the problem: it is an update.
    let mut ack = problem.clone();
    ack["updateStatus"] = json!("1");
    ack["updateAction"] = json!("acknowledged");
    ack["updateMessage"] = json!("On it");
    ack["updateUser"] = json!("Jane NOC");
    ack["updateTime"] = json!("2026.12.01 10:00:00");
    for _ in 0..2 {
        // The media type retrying the same update: one event.
        let (status, body) = send(ack.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["tags"]["__zbx_isp_ticket_id"], "NET-5150");
    }
    let mut severity = ack.clone();
    severity["updateAction"] = json!("changed severity");
    severity["severity"] = json!("High");
    send(severity).await;
    // An escalation step re-sending the problem is still the one problem.
    let (_, body) = send(problem.clone()).await;
    assert_eq!(body["tags"]["__zbx_isp_ticket_id"], "NET-5150");
    // Discovery and internal events are not tickets.
    let mut internal = problem.clone();
    internal["eventSource"] = json!("3");
    internal["eventId"] = json!("5151");
    let (status, _) = send(internal).await;
    assert_eq!(status, StatusCode::OK);
    // A body that is not even JSON is refused only after the token is checked.
    let res = app
        .http
        .post(format!("{}/api/noc/zabbix/webhook", app.base))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let pool = app.admin_pool().await;
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT type, payload->'data' FROM noc.outbox WHERE type LIKE 'network.%' ORDER BY created_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let types: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "network.problem",
            "network.problem_updated",
            "network.problem_updated"
        ]
    );
    assert_eq!(rows[1].1["eventId"], "5150");
    assert_eq!(rows[1].1["action"], "acknowledged");
    assert_eq!(rows[1].1["message"], "On it");
    assert_eq!(rows[1].1["user"], "Jane NOC");
    assert_eq!(rows[2].1["severity"], "High");
}

#[tokio::test]
async fn moving_between_dynamic_and_static_plans_takes_and_frees_the_static_address() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (_, static_plan_id) = static_plan(&app, &admin, "192.0.2.192/29", 4, 8).await;
    let r = app
        .post(
            "/api/core/plans",
            &admin,
            json!({"name": "Home 10", "downloadSpeed": 10, "uploadSpeed": 5, "price": 2500, "billingCycle": "Monthly"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let dynamic = r.body["doc"]["id"].as_str().unwrap().to_string();
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.plans WHERE id = '{dynamic}'"
    ))
    .await;

    let sub = Uuid::now_v7();
    let mut snap = subscriber_snapshot(sub, "ACC-000555", dynamic.parse().unwrap());
    app.publish("billing", &SubscriberCreated(snap.clone()))
        .await;
    let order = installation_order(&app, &admin, sub).await;
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{}", order["id"].as_str().unwrap()),
            &admin,
            json!({"status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let framed = "SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000555' AND attribute = 'Framed-IP-Address'";
    assert_eq!(
        app.scalar::<i64>(framed).await,
        0,
        "dynamic plans get no Framed-IP-Address"
    );
    // Online through a router the NOC knows as a NAS.
    let (nas_port, mut received) = stand_in_nas("nas-secret-4").await;
    router_nas(&app, &admin, "127.0.0.1", "nas-secret-4", nas_port).await;
    open_session(&app, "ACC-000555", "127.0.0.1", "86000001").await;

    snap.service_plan = static_plan_id.parse().unwrap();
    snap.updated_at = chrono::Utc::now();
    app.publish("billing", &SubscriberUpdated(snap.clone()))
        .await;
    app.wait_for("SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000555' AND attribute = 'Framed-IP-Address' AND value = '192.0.2.193'").await;
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM noc.ip_addresses WHERE status = 'Assigned'")
            .await,
        1
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000555' AND value = '4M/8M'").await,
        1
    );
    // A new address needs a new session.
    assert_eq!(
        next_request(&mut received, "86000001").await.0,
        40,
        "Disconnect-Request"
    );

    snap.service_plan = dynamic.parse().unwrap();
    snap.updated_at = chrono::Utc::now();
    app.publish("billing", &SubscriberUpdated(snap.clone()))
        .await;
    app.wait_for(
        "SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000555' AND value = '5M/10M'",
    )
    .await;
    assert_eq!(app.scalar::<i64>(framed).await, 0);
    assert_eq!(
        next_request(&mut received, "86000001").await.0,
        40,
        "Disconnect-Request"
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM noc.ip_addresses WHERE status = 'Assigned'")
            .await,
        0
    );
    assert_eq!(
        app.scalar::<i64>(&format!(
            "SELECT count(*) FROM noc.subscribers WHERE id = '{sub}' AND assigned_ip IS NULL"
        ))
        .await,
        1
    );

    // Between two dynamic plans the address stays: a CoA-Request carries the new
    // rate limit to the open session.
    let r = app
        .post(
            "/api/core/plans",
            &admin,
            json!({"name": "Home 20", "downloadSpeed": 20, "uploadSpeed": 10, "price": 3500, "billingCycle": "Monthly"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let faster = r.body["doc"]["id"].as_str().unwrap().to_string();
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.plans WHERE id = '{faster}'"
    ))
    .await;
    snap.service_plan = faster.parse().unwrap();
    snap.updated_at = chrono::Utc::now();
    app.publish("billing", &SubscriberUpdated(snap)).await;
    let (code, attrs) = next_request(&mut received, "86000001").await;
    assert_eq!(code, 43, "CoA-Request");
    let vsa = attrs
        .iter()
        .find(|(t, _)| *t == 26)
        .map(|(_, v)| v.clone())
        .expect("Vendor-Specific");
    assert_eq!(&vsa[6..], b"10M/20M");
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000555' AND value = '10M/20M'").await,
        1
    );
}

#[tokio::test]
async fn a_status_event_that_arrives_before_its_subscriber_is_applied_when_the_subscriber_arrives()
{
    let app = app().await;
    let admin = app.admin_token().await;
    let (_, plan) = static_plan(&app, &admin, "192.0.2.32/29", 2, 4).await;
    let sub = Uuid::now_v7();
    let snap = subscriber_snapshot(sub, "ACC-000640", plan.parse().unwrap());
    // Billing suspended the subscriber right after creating it, and NOC sees the
    // suspension first.
    let early = app
        .publish(
            "billing",
            &SubscriberSuspended(status_change(sub, "ACC-000640")),
        )
        .await;
    app.processed("noc", early).await;
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM noc.early_status_events")
            .await,
        1,
        "kept, not dropped"
    );
    app.publish("billing", &SubscriberCreated(snap)).await;
    let order = installation_order(&app, &admin, sub).await;
    let s = app
        .get(&format!("/api/noc/subscribers/{sub}"), &admin)
        .await
        .body;
    assert_eq!(s["status"], "Suspended");
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM noc.early_status_events")
            .await,
        0
    );
    // Installed while suspended: the account is written, and blocked.
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{}", order["id"].as_str().unwrap()),
            &admin,
            json!({"status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.radusergroup WHERE username = 'ACC-000640' AND groupname = 'suspended'"
        )
        .await,
        1
    );
}

/// Whether, within `secs`, a statement of this test's database matching `like`
/// waits on a lock.
async fn lock_waiter(pool: &sqlx::PgPool, like: &str, secs: u64) -> bool {
    eventually(secs, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE $1",
        )
        .bind(like)
        .fetch_one(pool)
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await
    .is_some()
}

/// Waits until a statement of this test's database matching `like` waits on a lock.
async fn waiting_on_lock(pool: &sqlx::PgPool, like: &str) {
    assert!(
        lock_waiter(pool, like, 15).await,
        "nothing waits on a lock in a statement like {like}"
    );
}

#[tokio::test]
async fn completing_an_order_while_billing_updates_the_subscriber_does_not_deadlock() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (_, tech_id) = technician(&app).await;
    let (_, plan) = static_plan(&app, &admin, "192.0.2.48/29", 2, 4).await;
    let sub = Uuid::now_v7();
    let mut snap = subscriber_snapshot(sub, "ACC-000650", plan.parse().unwrap());
    app.publish("billing", &SubscriberCreated(snap.clone()))
        .await;
    let order = installation_order(&app, &admin, sub).await;
    let order_id = order["id"].as_str().unwrap().to_string();

    // Interleave the two transactions the way that deadlocked: the completion
    // holds the order and is held up (by a lock on the staff table, which it
    // reads to check the assignee) before it locks the subscriber, while Billing's
    // subscriber.updated is applied.
    let pool = app.admin_pool().await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE noc.staff IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let order_path = format!("/api/noc/workOrders/{order_id}");
    let complete = app.patch(
        &order_path,
        &admin,
        json!({"assignedTo": tech_id, "status": "Completed"}),
    );
    let interleave = async {
        waiting_on_lock(&pool, "%FROM staff%").await;
        snap.first_name = "Amina W.".into();
        snap.updated_at = chrono::Utc::now();
        app.publish("billing", &SubscriberUpdated(snap.clone()))
            .await;
        waiting_on_lock(&pool, "%work_orders%").await;
        // Past deadlock_timeout (1 s), so the waiting consumer has run its check.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        blocker.commit().await.unwrap();
    };
    let (r, ()) = tokio::join!(complete, interleave);
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Billing's update is applied too, after the completion.
    let renamed = eventually(15, || async {
        let r = app
            .get(&format!("/api/noc/workOrders/{order_id}"), &admin)
            .await;
        (r.body["subscriberName"] == "Amina W. Otieno").then_some(())
    })
    .await;
    assert!(renamed.is_some());
}

#[tokio::test]
async fn changing_an_online_subscribers_address_by_hand_disconnects_the_session() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (_, plan) = static_plan(&app, &admin, "192.0.2.56/29", 3, 6).await;
    let sub = Uuid::now_v7();
    app.publish(
        "billing",
        &SubscriberCreated(subscriber_snapshot(
            sub,
            "ACC-000660",
            plan.parse().unwrap(),
        )),
    )
    .await;
    let order = installation_order(&app, &admin, sub).await;
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{}", order["id"].as_str().unwrap()),
            &admin,
            json!({"status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (nas_port, mut received) = stand_in_nas("nas-secret-3").await;
    router_nas(&app, &admin, "127.0.0.1", "nas-secret-3", nas_port).await;
    open_session(&app, "ACC-000660", "127.0.0.1", "83000001").await;

    // A Network Engineer moves the subscriber to another address of the pool.
    let other = app
        .get(
            "/api/noc/ipAddresses?where[ipAddress][equals]=192.0.2.60",
            &ne,
        )
        .await
        .body["docs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .patch(
            &format!("/api/noc/subscribers/{sub}"),
            &ne,
            json!({"assignedIp": other}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.radreply WHERE username = 'ACC-000660' AND attribute = 'Framed-IP-Address' AND value = '192.0.2.60'").await,
        1
    );
    let (code, valid, attrs) = tokio::time::timeout(Duration::from_secs(15), received.recv())
        .await
        .expect("a Disconnect-Request reaches the NAS")
        .unwrap();
    assert_eq!((code, valid), (40, true));
    assert_eq!(attr_str(&attrs, 1).as_deref(), Some("ACC-000660"));
    assert_eq!(attr_str(&attrs, 44).as_deref(), Some("83000001"));
}

#[tokio::test]
async fn a_naks_error_cause_and_a_silent_nas_timeout_are_recorded_in_the_request_log() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (_, plan) = static_plan(&app, &admin, "192.0.2.64/29", 3, 6).await;
    let sub = Uuid::now_v7();
    app.publish(
        "billing",
        &SubscriberCreated(subscriber_snapshot(
            sub,
            "ACC-000670",
            plan.parse().unwrap(),
        )),
    )
    .await;
    let order = installation_order(&app, &admin, sub).await;
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{}", order["id"].as_str().unwrap()),
            &admin,
            json!({"status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Two sessions on two routers: one NAKs (Session Context Not Found), one never
    // answers.
    let (nak_port, _) = stand_in_nas_at("127.0.0.2", "nak-secret", Answer::Nak(503)).await;
    let (silent_port, mut silent) =
        stand_in_nas_at("127.0.0.3", "silent-secret", Answer::Silent).await;
    router_nas(&app, &admin, "127.0.0.2", "nak-secret", nak_port).await;
    router_nas(&app, &admin, "127.0.0.3", "silent-secret", silent_port).await;
    open_session(&app, "ACC-000670", "127.0.0.2", "85000001").await;
    open_session(&app, "ACC-000670", "127.0.0.3", "85000002").await;

    app.publish(
        "billing",
        &SubscriberSuspended(status_change(sub, "ACC-000670")),
    )
    .await;
    let pool = app.admin_pool().await;
    let log = eventually(20, || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, String, Option<i32>, i32)> = sqlx::query_as(
                "SELECT acct_session_id, result, error_cause, attempts FROM noc.dynauth_requests
                 WHERE kind = 'Disconnect' ORDER BY acct_session_id",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            (rows.len() == 2 && rows.iter().all(|r| r.1 != "Pending")).then_some(rows)
        }
    })
    .await
    .expect("both requests answered or given up");
    assert_eq!(
        log,
        vec![
            ("85000001".to_string(), "NAK".to_string(), Some(503), 1),
            ("85000002".to_string(), "Timeout".to_string(), None, 3),
        ]
    );
    let mut seen = 0;
    while let Ok(Some((code, valid, _))) =
        tokio::time::timeout(Duration::from_millis(200), silent.recv()).await
    {
        assert_eq!((code, valid), (40, true));
        seen += 1;
    }
    assert_eq!(seen, 3, "the silent NAS got every retransmission");
}

#[tokio::test]
async fn a_pool_is_not_full_while_its_last_address_is_only_locked_by_a_transaction_that_rolls_back()
{
    let app = app().await;
    let admin = app.admin_token().await;
    // A /30: two usable addresses; one Reserved leaves a pool of one.
    let (subnet, plan) = static_plan(&app, &admin, "198.51.100.8/30", 1, 2).await;
    let first = app
        .get(
            &format!("/api/noc/ipAddresses?where[subnet][equals]={subnet}&sort=ipAddress"),
            &admin,
        )
        .await
        .body["docs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .patch(
            &format!("/api/noc/ipAddresses/{first}"),
            &admin,
            json!({"status": "Reserved"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let sub = Uuid::now_v7();
    app.publish(
        "billing",
        &SubscriberCreated(subscriber_snapshot(
            sub,
            "ACC-000680",
            plan.parse().unwrap(),
        )),
    )
    .await;
    let order = installation_order(&app, &admin, sub).await;

    // Another transaction holds the last Available address, then rolls back.
    let pool = app.admin_pool().await;
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM noc.ip_addresses WHERE status = 'Available' FOR UPDATE")
        .execute(&mut *other)
        .await
        .unwrap();
    let order_path = format!("/api/noc/workOrders/{}", order["id"].as_str().unwrap());
    let complete = app.patch(&order_path, &admin, json!({"status": "Completed"}));
    let roll_back = async {
        // (Before the fix the completion did not wait: it answered 409 at once.)
        lock_waiter(&pool, "%ip_addresses%", 5).await;
        other.rollback().await.unwrap();
    };
    let (r, ()) = tokio::join!(complete, roll_back);
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let s = app
        .get(&format!("/api/noc/subscribers/{sub}"), &admin)
        .await
        .body;
    let ip = app
        .get(
            &format!("/api/noc/ipAddresses/{}", s["assignedIp"].as_str().unwrap()),
            &admin,
        )
        .await
        .body;
    assert_ne!(ip["id"], first.as_str(), "not the Reserved one");
    assert_eq!(ip["status"], "Assigned");
    assert_eq!(ip["assignedTo"], sub.to_string());
}
