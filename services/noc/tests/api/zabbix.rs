//! The Zabbix webhook: its token, each event once, updates before problems, the ticket.

use super::*;

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
