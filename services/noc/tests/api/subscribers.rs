//! The NOC's subscriber fields: technical fields follow the rules, billing fields are read-only.

use isp_testkit::fixtures::subscriber_snapshot;

use super::*;

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
