//! Partners' messages become CRM leads: once each, unknown senders, CRM being down.

use std::sync::{Arc, Mutex};

use super::*;

/// CRM behind a switch: while off it answers 503 like a proxy in front of a CRM
/// that is down; while on it forwards to the platform.
struct Switch {
    base: String,
    target: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn switch() -> Switch {
    use axum::extract::{Request, State};
    use axum::response::IntoResponse;
    let target: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    async fn forward(
        State(t): State<Arc<Mutex<Option<String>>>>,
        req: Request,
    ) -> axum::response::Response {
        let Some(to) = t.lock().unwrap().clone() else {
            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "CRM is down").into_response();
        };
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let mut out = reqwest::Client::new().request(parts.method, format!("{to}{}", parts.uri));
        for (k, v) in &parts.headers {
            if k != "host" {
                out = out.header(k, v);
            }
        }
        let res = out.body(bytes).send().await.unwrap();
        let status = res.status();
        (status, res.bytes().await.unwrap()).into_response()
    }
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(target.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Switch { base, target, task }
}

#[tokio::test]
async fn an_active_partner_gets_a_lead_and_a_confirmation_once_however_often_delivered() {
    let w = world().await;
    let p = partner(&w, "0711000002", "Active").await;
    let b = building(&w, &p, "Sunrise Apartments").await;
    let me = Sender::phone("254711000002");
    let msg = "LEAD Jane Wanjiku, 0712 345 678, B4";
    let hook = wa::text_webhook(PHONE_ID, &me, "wamid.lead1", msg);
    for _ in 0..3 {
        assert_eq!(webhook(&w, &hook).await.status, StatusCode::OK);
    }
    let m = outcome(&w, "wamid.lead1", &["Lead created"]).await;
    assert_eq!(m["channel"], "WhatsApp");
    assert_eq!(m["sender"], "+254711000002");
    assert_eq!(m["partner"], json!(p));
    assert_eq!(m["rawText"], msg);
    assert_eq!(m["replyStatus"], "Sent");
    let lead = crm_lead(&w, m["lead"].as_str().unwrap()).await;
    assert_eq!(lead["leadSource"], "Partner Referral");
    assert_eq!(lead["referredBy"], json!(p));
    assert_eq!(lead["subscriberName"], "Jane Wanjiku");
    assert_eq!(lead["subscriberPhone"], "+254712345678");
    assert_eq!(lead["notes"], msg);
    let unit = w
        .app
        .get(
            &format!(
                "/api/crm/buildingUnits/{}",
                lead["serviceLocation"].as_str().unwrap()
            ),
            &w.admin,
        )
        .await;
    assert_eq!(unit.body["unitNumber"], "B4");
    assert_eq!(unit.body["building"], json!(b));
    assert_eq!(unit.body["status"], "Lead");

    let replies = replies_to(&w, "254711000002", 1).await;
    let r = &replies[0];
    assert_eq!(r.phone_number_id, PHONE_ID);
    assert_eq!(r.body["messaging_product"], "whatsapp");
    assert!(
        r.text().contains("Jane Wanjiku") && r.text().contains("B4"),
        "{}",
        r.text()
    );
    assert_eq!(m["replyError"], Value::Null);

    // The same referral again (a new message id) is a Duplicate, not a second lead.
    text(
        &w,
        &me,
        "wamid.lead1-again",
        "lead jane wanjiku, 0712345678, b4",
    )
    .await;
    let d = outcome(&w, "wamid.lead1-again", &["Duplicate"]).await;
    assert_eq!(d["lead"], m["lead"]);
    replies_to(&w, "254711000002", 2).await;
    // Redelivery did nothing more.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(crm_leads(&w).await, 1);
    assert_eq!(w.standin.sent_to("254711000002").len(), 2);
    assert_eq!(
        wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await,
        2
    );
}

#[tokio::test]
async fn unknown_senders_get_nothing_inactive_partners_are_told_and_admin_reprocesses_once() {
    let w = world().await;
    text(
        &w,
        &Sender::phone("254799999999"),
        "wamid.stranger",
        "LEAD Jane, 0712345678, B4",
    )
    .await;
    let m = outcome(&w, "wamid.stranger", &["Unknown sender"]).await;
    assert!(
        m["reason"].as_str().unwrap().contains("+254799999999"),
        "{m}"
    );
    assert_eq!(m["replyStatus"], Value::Null);

    let p = partner(&w, "0711000003", "Prospect").await;
    building(&w, &p, "Baraka Court").await;
    text(
        &w,
        &Sender::phone("254711000003"),
        "wamid.prospect",
        "LEAD Jane Wanjiku, 0712345678, B4",
    )
    .await;
    let m = outcome(&w, "wamid.prospect", &["Inactive partner"]).await;
    let reply = replies_to(&w, "254711000003", 1).await;
    assert!(
        reply[0].text().contains("not active"),
        "{}",
        reply[0].text()
    );
    assert_eq!(crm_leads(&w).await, 0);
    assert!(
        w.standin.sent_to("254799999999").is_empty(),
        "an unknown number gets no reply"
    );

    // The log: Admin and Sales Agent read it; nobody writes it; others do not read it.
    let (sales, _) = w.app.staff_token("Sales Agent").await;
    let list = w
        .app
        .get("/api/wa-parser/inboundMessages?sort=-receivedAt", &sales)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    assert_eq!(list.body["totalDocs"], 2);
    let filtered = w
        .app
        .get(
            "/api/wa-parser/inboundMessages?where[outcome][equals]=Unknown%20sender",
            &sales,
        )
        .await;
    assert_eq!(filtered.body["totalDocs"], 1);
    let (billing, _) = w.app.staff_token("Billing Manager").await;
    assert_eq!(
        w.app
            .get("/api/wa-parser/inboundMessages", &billing)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let mid = m["id"].as_str().unwrap().to_string();
    // No write routes exist, for any role or service scope.
    let writer = w.app.service_token(
        "x",
        &[
            "wa-parser.inboundMessages.create",
            "wa-parser.inboundMessages.update",
            "wa-parser.inboundMessages.delete",
        ],
    );
    for token in [&w.admin, &writer] {
        assert_eq!(
            w.app
                .post(
                    "/api/wa-parser/inboundMessages",
                    token,
                    json!({"channel": "SMS"})
                )
                .await
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            w.app
                .patch(
                    &format!("/api/wa-parser/inboundMessages/{mid}"),
                    token,
                    json!({"outcome": "Lead created"})
                )
                .await
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            w.app
                .delete(&format!("/api/wa-parser/inboundMessages/{mid}"), token)
                .await
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
    let one = w
        .app
        .get(&format!("/api/wa-parser/inboundMessages/{mid}"), &sales)
        .await;
    assert_eq!(one.body["outcome"], "Inactive partner");
    assert_eq!(
        w.app
            .get(&format!("/api/wa-parser/inboundMessages/{mid}"), &billing)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Activated, then re-processed by an Admin (not a Sales Agent): a lead, once.
    let reprocess = format!("/api/wa-parser/inboundMessages/{mid}/reprocess");
    assert_eq!(
        w.app.post(&reprocess, &sales, json!({})).await.status,
        StatusCode::FORBIDDEN
    );
    let r = w
        .app
        .patch(
            &format!("/api/core/partners/{p}"),
            &w.admin,
            json!({"status": "Active"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    wait_partner(&w, &p, "Active").await;
    let r = w.app.post(&reprocess, &w.admin, json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let m = outcome(&w, "wamid.prospect", &["Lead created"]).await;
    assert_eq!(m["previousOutcome"], "Inactive partner");
    assert!(m["reprocessedAt"].is_string());
    assert_eq!(crm_leads(&w).await, 1);
    let r = w.app.post(&reprocess, &w.admin, json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    // A message that succeeded cannot be re-processed.
    let ok_id = Uuid::new_v4();
    assert_eq!(
        w.app
            .post(
                &format!("/api/wa-parser/inboundMessages/{ok_id}/reprocess"),
                &w.admin,
                json!({})
            )
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn crm_down_keeps_the_message_and_it_is_processed_once_when_crm_returns() {
    let sw = switch().await;
    let crm = sw.base.clone();
    let w = world_with(|s| s.crm_url = Some(crm)).await;
    let p = partner(&w, "0711000006", "Active").await;
    building(&w, &p, "Sunrise Apartments").await;
    text(
        &w,
        &Sender::phone("254711000006"),
        "wamid.down",
        "LEAD Jane Wanjiku, 0712345678, B4",
    )
    .await;
    let m = outcome(&w, "wamid.down", &["CRM unavailable"]).await;
    assert!(
        m["reason"].as_str().unwrap().contains("CRM unavailable"),
        "{m}"
    );
    assert!(
        w.standin.sent_to("254711000006").is_empty(),
        "no reply while pending"
    );
    // Retried with backoff while down.
    let tries = eventually(15, || async {
        let n: i32 = wa_scalar(&w, "SELECT attempts FROM inbound_messages").await;
        (n >= 3).then_some(n)
    })
    .await;
    assert!(tries.is_some(), "not retried");
    assert_eq!(crm_leads(&w).await, 0);

    *sw.target.lock().unwrap() = Some(w.app.base.clone());
    let m = outcome(&w, "wamid.down", &["Lead created"]).await;
    let r = replies_to(&w, "254711000006", 1).await;
    assert!(r[0].text().contains("Jane Wanjiku"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(crm_leads(&w).await, 1);
    assert_eq!(w.standin.sent_to("254711000006").len(), 1);
    assert!(m["lead"].is_string());
}
