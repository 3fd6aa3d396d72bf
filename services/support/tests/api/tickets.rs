//! Tickets: numbering, field checks and the status workflow.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn tickets_are_numbered_checked_and_follow_the_status_workflow() {
    let app = app().await;
    let (token, agent_id) = agent(&app).await;
    let sub = subscriber(Uuid::now_v7(), "+254722000222");
    known_subscriber(&app, &sub).await;

    // Every missing field is named at once.
    let r = app.post("/api/support/tickets", &token, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(
        paths(&r),
        ["description", "priority", "subject", "subscriber"],
        "{:?}",
        r.body
    );
    // Unknown subscriber, a non-agent assignee and a bad priority, all at once.
    let (_, tech) = app.staff_token("Technician").await;
    wait_count(
        &app,
        &format!("SELECT count(*) FROM support.staff WHERE id = '{tech}'"),
        1,
    )
    .await;
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"subscriber": Uuid::now_v7(), "subject": "No internet", "description": "Since morning",
                   "priority": "High", "assignedTo": tech}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(paths(&r), ["assignedTo", "subscriber"], "{:?}", r.body);
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"subscriber": sub.id, "subject": "x", "description": "y", "priority": "Urgent"}),
        )
        .await;
    assert_eq!(paths(&r), ["priority"], "{:?}", r.body);
    // A network ticket has no subscriber; a new ticket is Open.
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"kind": "Network", "subscriber": sub.id, "subject": "x", "description": "y",
                   "priority": "High", "status": "Closed"}),
        )
        .await;
    assert_eq!(paths(&r), ["status", "subscriber"], "{:?}", r.body);
    assert_eq!(count(&app, "SELECT count(*) FROM support.tickets").await, 0);

    let create = |subject: &'static str| {
        let (app, token, agent_id) = (&app, &token, agent_id.clone());
        async move {
            let r = app
                .post(
                    "/api/support/tickets",
                    token,
                    json!({"subscriber": sub.id, "subject": subject, "description": "Red LOS light",
                           "priority": "Medium", "assignedTo": agent_id}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            r.body["doc"].clone()
        }
    };
    let t1 = create("No internet").await;
    let t2 = create("Slow").await;
    assert_eq!(t1["ticketID"], "TCK-000001");
    assert_eq!(t2["ticketID"], "TCK-000002");
    assert_eq!(t1["status"], "Open");
    assert_eq!(t1["kind"], "Customer");
    let id = t1["id"].as_str().unwrap().to_string();
    let path = format!("/api/support/tickets/{id}");

    // Open -> In Progress -> Resolved -> (reopened) Open -> Resolved -> Closed.
    for (to, ok) in [
        ("In Progress", true),
        ("Closed", false),
        ("Resolved", true),
        ("Open", true),
        ("Resolved", true),
        ("Closed", true),
    ] {
        let r = app.patch(&path, &token, json!({"status": to})).await;
        if ok {
            assert_eq!(r.status, StatusCode::OK, "to {to}: {:?}", r.body);
            assert_eq!(r.body["doc"]["status"], to);
        } else {
            assert_eq!(r.status, StatusCode::CONFLICT, "to {to}: {:?}", r.body);
            assert_eq!(r.error_path(), Some("status"));
        }
    }
    // Closed is final: neither the status nor anything else changes.
    let r = app.patch(&path, &token, json!({"status": "Open"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let r = app
        .patch(&path, &token, json!({"subject": "changed"}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let r = app
        .patch(
            &format!("/api/support/tickets/{}", t2["id"].as_str().unwrap()),
            &token,
            json!({"subscriber": Uuid::now_v7(), "ticketID": "TCK-9"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);

    // Every change went out as ticket.created / ticket.updated.
    let created = count(
        &app,
        "SELECT count(*) FROM support.outbox WHERE type = 'ticket.created'",
    )
    .await;
    let updated = count(
        &app,
        "SELECT count(*) FROM support.outbox WHERE type = 'ticket.updated'",
    )
    .await;
    assert_eq!((created, updated), (2, 5));
    let pool = app.admin_pool().await;
    let last: Value = sqlx::query_scalar(
        "SELECT payload->'data' FROM support.outbox WHERE type = 'ticket.updated' ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(last["ticketId"], "TCK-000001");
    assert_eq!(last["status"], "Closed");
    assert_eq!(last["subscriber"], sub.id.to_string());
    assert_eq!(last["kind"], "Customer");
}
