//! RADIUS against a real FreeRADIUS: accounts, suspension, disconnects and the request log.

use std::time::Duration;

use isp_testkit::fixtures::{status_change, subscriber_snapshot};

use super::*;

#[tokio::test]
async fn provisioning_suspension_and_reactivation_against_real_freeradius() {
    let app = app().await;
    let admin = app.admin_token().await;
    let fr = app.freeradius().await;
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
