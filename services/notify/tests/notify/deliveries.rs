//! The deliveries collection: Admin lists it and nobody writes it.

use super::*;

#[tokio::test]
async fn admin_lists_deliveries_and_nobody_writes_them() {
    let mut env = Env::with_core(Options::default()).await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    env.gw.mark_invalid("+254712000030");
    let ok = sms("+254712000031", "Hello");
    let bad = sms("+254712000030", "Hello");
    env.request(&ok).await;
    env.request(&bad).await;
    env.wait_status(ok.id, "Delivered", 20).await;
    env.wait_status(bad.id, "Failed", 20).await;
    let admin = env.app.admin_token().await;
    let get = |path: String, token: String| {
        let http = env.app.http.clone();
        let url = format!("{}{path}", env.base);
        async move {
            let r = http
                .get(url)
                .header("authorization", format!("JWT {token}"))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (code, body) = get(
        "/api/notify/deliveries?where[status][equals]=Failed".into(),
        admin.clone(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["totalDocs"], 1);
    let doc = &body["docs"][0];
    assert_eq!(doc["id"], bad.id.to_string());
    assert_eq!(doc["failureReason"], "InvalidPhoneNumber (403)");
    assert_eq!(doc["requester"], "support");
    let (code, doc) = get(format!("/api/notify/deliveries/{}", ok.id), admin.clone()).await;
    assert_eq!(code, 200);
    assert_eq!(doc["status"], "Delivered");
    assert_eq!(doc["cost"], "0.8000");
    assert_eq!(doc["costCurrency"], "KES");
    // Other roles see nothing; nobody creates, edits or deletes a delivery.
    let (agent, _) = env.app.staff_token("Support Agent").await;
    assert_eq!(get("/api/notify/deliveries".into(), agent).await.0, 403);
    let url = format!("{}/api/notify/deliveries/{}", env.base, ok.id);
    let r = env
        .app
        .http
        .patch(&url)
        .header("authorization", format!("JWT {admin}"))
        .json(&serde_json::json!({"status": "Queued"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = env
        .app
        .http
        .delete(&url)
        .header("authorization", format!("JWT {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(env.status(ok.id).await.as_deref(), Some("Delivered"));
}
