//! Who works in Support (Admin and Support Agents only), and that nobody here sees money.

use reqwest::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn only_admin_and_support_agents_work_here_and_never_see_money() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (agent, _) = agent(&app).await;
    let sub = subscriber(Uuid::now_v7(), "+254722000333");
    known_subscriber(&app, &sub).await;
    for role in [
        "Sales Agent",
        "Billing Manager",
        "Network Engineer",
        "Technician",
    ] {
        let (t, _) = app.staff_token(role).await;
        for path in [
            "/api/support/tickets",
            "/api/support/messages",
            "/api/support/contacts",
            "/api/support/messageTemplates",
            "/api/support/subscribers",
        ] {
            let r = app.get(path, &t).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{role} {path}");
        }
        let r = app
            .post(
                "/api/support/contacts",
                &t,
                json!({"phoneNumber": "0712345678"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}");
        let r = app
            .post(
                "/api/support/messages/bulk",
                &t,
                json!({"audience": {"type": "subscribers"}, "channel": "SMS", "content": "x", "category": "Transactional"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}");
    }
    // The agent reads what troubleshooting needs, and nothing about money.
    let r = app
        .get(&format!("/api/support/subscribers/{}", sub.id), &agent)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["contactPhone"], "+254722000333");
    for money in ["accountBalance", "balance", "amountDue"] {
        assert!(r.body.get(money).is_none(), "{money} in {:?}", r.body);
    }
    // The log is read-only, even for Admin.
    for t in [&admin, &agent] {
        let r = app
            .post(
                "/api/support/messages",
                t,
                json!({"recipient": "+254700000000", "type": "SMS", "content": "x", "status": "Sent"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(
            r.body["errors"][0]["message"].as_str().is_some(),
            "405 in the platform's error shape: {:?}",
            r.body
        );
    }
    // Which events notify is Admin's to decide.
    let r = app
        .get(
            "/api/support/notificationTriggers?where[triggerEvent][equals]=invoice.created",
            &agent,
        )
        .await;
    let trig = r.body["docs"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/api/support/notificationTriggers/{trig}");
    let r = app.patch(&path, &agent, json!({"enabled": false})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.patch(&path, &admin, json!({"enabled": false})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}
