//! DESIGN section 5, flow 6 across the whole fleet over real HTTP, Postgres and
//! NATS: Zabbix posts a problem to NOC's webhook -> NOC publishes network.problem
//! -> Support opens one High ticket naming the router and the subscribers behind
//! it; the same webhook three times is still one ticket; an acknowledgement adds a
//! note; the recovery resolves it.

use isp_testkit::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn a_zabbix_problem_becomes_one_high_ticket_and_its_recovery_resolves_it() {
    let app = TestApp::spawn(&isp::fleet()).await;
    let admin = app.admin_token().await;
    let token =
        std::fs::read_to_string(app.shared.config.data_dir.join("keys/zabbix-webhook.token"))
            .unwrap();
    // The router Zabbix monitors, in NOC's inventory.
    let r = app
        .post(
            "/api/noc/resources",
            &admin,
            json!({"resourceName": "estate-rtr-7", "resourceType": "Router", "status": "Deployed",
                   "managementIp": "10.20.0.7", "nasSecret": "s3cret-nas"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let router = r.body["doc"]["id"].as_str().unwrap().to_string();
    let pool = app.admin_pool().await;
    let projected = eventually(20, || {
        let pool = pool.clone();
        let router = router.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM support.resources WHERE id = $1::uuid")
                    .bind(router)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (n == 1).then_some(())
        }
    })
    .await;
    assert!(projected.is_some(), "Support never heard of the router");

    let webhook = |body: Value| {
        let (app, token) = (&app, token.trim().to_string());
        async move {
            let res = app
                .http
                .post(format!("{}/api/noc/zabbix/webhook", app.base))
                .header("authorization", format!("Bearer {token}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let problem = json!({"eventId": "77001", "eventValue": "1", "eventName": "Unavailable by ICMP ping",
        "severity": "High", "updateStatus": "0", "eventSource": "0", "recoveryEventId": "{EVENT.RECOVERY.ID}",
        "hostName": "Estate router 7", "hostIp": "10.20.0.7", "triggerId": "23001"});
    for _ in 0..3 {
        let (status, body) = webhook(problem.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["tags"]["__zbx_isp_ticket_id"], "NET-77001");
    }
    let tickets = |filter: &'static str| {
        let (app, admin) = (&app, admin.clone());
        async move {
            app.get(&format!("/api/support/tickets?{filter}"), &admin)
                .await
                .body
        }
    };
    let ticket = eventually(20, || async {
        let b = tickets("where[ticketID][equals]=NET-77001").await;
        b["docs"].as_array().and_then(|d| d.first().cloned())
    })
    .await
    .expect("the problem's ticket");
    assert_eq!(ticket["priority"], "High");
    assert_eq!(ticket["kind"], "Network");
    assert_eq!(ticket["status"], "Open");
    assert_eq!(ticket["resource"], router.as_str());
    assert_eq!(ticket["affectedSubscribers"], 0);
    assert_eq!(ticket["networkHost"], "Estate router 7");
    assert!(ticket["description"]
        .as_str()
        .unwrap()
        .contains("Router: estate-rtr-7, 0 subscribers behind it"));

    // An acknowledgement (eventValue 1, updateStatus 1) adds a note.
    let mut ack = problem.clone();
    ack["updateStatus"] = json!("1");
    ack["updateAction"] = json!("acknowledged");
    ack["updateMessage"] = json!("Power cut in the estate, KPLC informed");
    ack["updateUser"] = json!("Noc Engineer");
    ack["updateTime"] = json!("2026.12.01 09:10:00");
    let (status, body) = webhook(ack).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = format!("/api/support/tickets/{}", ticket["id"].as_str().unwrap());
    let noted = eventually(20, || async {
        let t = app.get(&path, &admin).await.body;
        (t["notes"].as_array().map(Vec::len) == Some(1)).then_some(t)
    })
    .await
    .expect("the acknowledgement's note");
    assert!(noted["notes"][0]["text"]
        .as_str()
        .unwrap()
        .contains("Power cut in the estate"));

    // The recovery ({EVENT.ID} is still the problem's id) resolves it.
    let mut recovery = problem.clone();
    recovery["eventValue"] = json!("0");
    recovery["recoveryEventId"] = json!("77042");
    let (status, _) = webhook(recovery.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let resolved = eventually(20, || async {
        let t = app.get(&path, &admin).await.body;
        (t["status"] == "Resolved").then_some(t)
    })
    .await
    .expect("resolved on recovery");
    assert_eq!(resolved["notes"].as_array().unwrap().len(), 2);
    webhook(recovery).await;

    let all = tickets("where[kind][equals]=Network").await;
    assert_eq!(all["totalDocs"], 1, "{all}");
}
