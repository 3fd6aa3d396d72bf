//! Work orders: active technicians only, completion without deadlocking Billing's updates.

use std::time::Duration;

use isp_testkit::fixtures::subscriber_snapshot;

use super::*;

/// Waits until a statement of this test's database matching `like` waits on a lock.
async fn waiting_on_lock(pool: &sqlx::PgPool, like: &str) {
    assert!(
        lock_waiter(pool, like, 15).await,
        "nothing waits on a lock in a statement like {like}"
    );
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
