//! IP address management: subnets, static addresses taken and freed, full pools.

use std::time::Duration;

use isp_testkit::fixtures::subscriber_snapshot;

use super::*;

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
