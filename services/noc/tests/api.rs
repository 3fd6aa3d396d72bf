//! NOC over real HTTP, Postgres, NATS and FreeRADIUS. Billing's events are
//! published onto JetStream by the tests themselves, as Billing would.

#[path = "api/ipam.rs"]
mod ipam;
#[path = "api/projections.rs"]
mod projections;
#[path = "api/radius.rs"]
mod radius;
#[path = "api/resources.rs"]
mod resources;
#[path = "api/subscribers.rs"]
mod subscribers;
#[path = "api/work_orders.rs"]
mod work_orders;
#[path = "api/zabbix.rs"]
mod zabbix;

use isp_events::payloads::*;
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
