//! Message templates: checked by the engine, with defaults shipped for each trigger.

use reqwest::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn templates_are_checked_by_the_engine_and_defaults_ship_for_each_trigger() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    let r = app
        .get("/api/support/messageTemplates?limit=100", &token)
        .await;
    let mut triggers: Vec<String> = r.body["docs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["triggerEvent"].as_str().map(String::from))
        .collect();
    triggers.sort();
    assert_eq!(
        triggers,
        [
            "invoice.created",
            "invoice.overdue",
            "payment.received",
            "subscriber.activated",
            "subscriber.reactivated",
            "subscriber.suspended",
            "ticket.updated"
        ]
    );
    let r = app
        .post(
            "/api/support/messageTemplates",
            &token,
            json!({"templateName": "Outage Notice", "content": "Dear {{ firstName }}, {{ amountDue }} {{ balance }}",
                   "subject": "{{ oops"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(paths(&r), ["content", "subject"]);
    let msg = r.body["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("amountDue") && msg.contains("balance"),
        "{msg}"
    );
    // amountDue is fine where the trigger provides it.
    let r = app
        .post(
            "/api/support/messageTemplates",
            &token,
            json!({"templateName": "Outage Notice", "content": "Dear {{ firstName }}, the network in your area is down."}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .post(
            "/api/support/messageTemplates",
            &token,
            json!({"templateName": "Outage Notice", "content": "again"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("templateName"));
    // A second template for a trigger that has one is a conflict too.
    let r = app
        .post(
            "/api/support/messageTemplates",
            &token,
            json!({"templateName": "Another invoice", "triggerEvent": "invoice.created",
                   "content": "{{ invoiceNumber }}: {{ amountDue }}"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("triggerEvent"));
}
