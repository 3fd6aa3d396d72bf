//! docs/contract.md#flows, flow 4 and 5 across the whole fleet over real HTTP, Postgres,
//! NATS and FreeRADIUS: an installed subscriber is online -> the daily run finds
//! the first invoice overdue and Billing suspends -> NOC blocks the RADIUS account
//! and sends an RFC 5176 Disconnect-Request to the subscriber's NAS -> the Billing
//! Manager records the payment -> Billing reactivates -> FreeRADIUS accepts again.

use std::time::Duration;

mod common;

use isp_testkit::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::json;

/// A NAS that records the Dynamic Authorization requests it receives (code and
/// attributes) without answering: the NOC records the timeout, the test the packet.
async fn listening_nas() -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(u8, Vec<(u8, Vec<u8>)>)>,
) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = sock.recv_from(&mut buf).await {
            let mut attrs = vec![];
            let mut i = 20;
            while i + 2 <= n && buf[i + 1] >= 2 {
                let l = buf[i + 1] as usize;
                attrs.push((buf[i], buf[i + 2..(i + l).min(n)].to_vec()));
                i += l;
            }
            let _ = tx.send((buf[0], attrs));
        }
    });
    (port, rx)
}

#[tokio::test]
async fn an_overdue_subscriber_is_suspended_disconnected_and_restored_after_paying() {
    let app = TestApp::spawn(&isp::fleet()).await;
    let fr = app.freeradius().await;
    let admin = app.admin_token().await;
    let (billing, _) = app.staff_token("Billing Manager").await;
    let (ne, _) = app.staff_token("Network Engineer").await;

    // A Dynamic plan, known to Billing and NOC through Core's events.
    let plan = app.create("/api/core/plans", &admin, json!({"name": "Home 10", "downloadSpeed": 10, "uploadSpeed": 5, "price": 2500, "billingCycle": "Monthly"})).await;
    let walk_in = json!({"firstName": "Otieno", "lastName": "Odhiambo", "mpesaNumber": "0722333444", "servicePlan": plan, "billingCycle": "Monthly"});
    let created = common::installed_subscriber(&app, &admin, &ne, walk_in).await;
    let sub = created["doc"]["id"].as_str().unwrap().to_string();
    let invoice = created["invoice"]["id"].as_str().unwrap().to_string();
    let due = created["invoice"]["dueDate"].as_str().unwrap().to_string();
    let amount = created["invoice"]["amountDue"]
        .as_str()
        .unwrap()
        .to_string();

    let tech = app
        .get(&format!("/api/noc/subscribers/{sub}"), &ne)
        .await
        .body;
    let (user, pass) = (
        tech["radiusUsername"].as_str().unwrap().to_string(),
        tech["radiusPassword"].as_str().unwrap().to_string(),
    );
    assert!(
        fr.auth(&user, &pass).await.unwrap().accepted,
        "{}",
        fr.log()
    );

    // Online through a router the NOC knows as a NAS.
    let (nas_port, mut nas) = listening_nas().await;
    let r = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "Estate router", "resourceType": "Router", "status": "Deployed",
                   "managementIp": "127.0.0.1", "nasSecret": "estate-secret", "dynauthPort": nas_port}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let acct = fr
        .accounting(&[
            ("Acct-Status-Type", "Start"),
            ("Acct-Session-Id", "5000001"),
            ("User-Name", &user),
            ("NAS-IP-Address", "127.0.0.1"),
        ])
        .await
        .unwrap();
    assert_eq!(acct.code, "Accounting-Response", "{}", fr.log());

    // The first invoice fell due yesterday (a run cannot be dated in the future,
    // so its due date moves back a day): today's run suspends.
    sqlx::query("UPDATE billing.invoices SET due_date = due_date - 1 WHERE id = $1::uuid")
        .bind(&invoice)
        .execute(&app.admin_pool().await)
        .await
        .unwrap();
    let r = app
        .post("/api/billing/jobs/daily-run", &admin, json!({"date": due}))
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    assert!(
        app.subscriber_with_status(&admin, &sub, "Suspended", 15)
            .await
            .is_some(),
        "Billing suspends the overdue subscriber"
    );
    let inv = app
        .get(&format!("/api/billing/invoices/{invoice}"), &billing)
        .await;
    assert_eq!(inv.body["status"], "Overdue");

    let (code, attrs) = tokio::time::timeout(Duration::from_secs(20), nas.recv())
        .await
        .expect("a Disconnect-Request reaches the NAS")
        .unwrap();
    assert_eq!(code, 40, "Disconnect-Request");
    let attr = |t: u8| {
        attrs
            .iter()
            .find(|(a, _)| *a == t)
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
    };
    assert_eq!(attr(1).as_deref(), Some(user.as_str()));
    assert_eq!(attr(44).as_deref(), Some("5000001"));
    let rejected = eventually(10, || async {
        (!fr.auth(&user, &pass).await.unwrap().accepted).then_some(())
    })
    .await;
    assert!(
        rejected.is_some(),
        "FreeRADIUS rejects the suspended subscriber"
    );

    // Paid in cash at the office: reactivated, and FreeRADIUS accepts again.
    let r = app
        .post(
            "/api/billing/payments",
            &billing,
            json!({"paymentReference": "CASH-0001", "invoice": invoice, "amountPaid": amount, "paymentMethod": "Cash", "paymentDate": due}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(
        app.subscriber_with_status(&admin, &sub, "Active", 15)
            .await
            .is_some(),
        "Billing reactivates the paid-up subscriber"
    );
    let back = eventually(15, || async {
        fr.auth(&user, &pass).await.unwrap().accepted.then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "FreeRADIUS accepts the reactivated subscriber\n{}",
        fr.log()
    );
}
