//! Inbound SMS: the path token, stored once, answered through Notify, and the source allowlist.

use super::*;

async fn sms(w: &World, token: &str, fields: &[(&str, &str)]) -> Res {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let res = w
        .app
        .http
        .post(format!("{}/api/wa-parser/sms/{token}", w.app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    Res {
        status,
        body: res.json().await.unwrap_or(Value::Null),
    }
}

#[tokio::test]
async fn inbound_sms_is_authenticated_by_path_token_stored_once_and_answered_through_notify() {
    let w = world_with(|s| s.sms_shortcode = Some("22384".into())).await;
    let p = partner(&w, "0711000007", "Active").await;
    building(&w, &p, "Sunrise Apartments").await;
    let form = [
        ("from", "+254711000007"),
        ("to", "22384"),
        ("text", "Name: Jane Wanjiku\nPhone: 0712345678\nUnit: B4"),
        ("date", "2026-12-01 10:00:00"),
        ("id", "ATXid_0a1b2c"),
        ("linkId", "SampleLinkId123"),
        ("networkCode", "63902"),
    ];
    assert_eq!(
        sms(&w, "wrong-token", &form).await.status,
        StatusCode::NOT_FOUND
    );
    let r = sms(&w, SMS_TOKEN, &[("text", "x")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, ["from", "id"]);
    // To another number than our shortcode: acknowledged, ignored.
    let mut other = form;
    other[1] = ("to", "40404");
    other[4] = ("id", "ATXid_other");
    assert_eq!(sms(&w, SMS_TOKEN, &other).await.status, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(sms(&w, SMS_TOKEN, &form).await.status, StatusCode::OK);
    }
    let m = outcome(&w, "ATXid_0a1b2c", &["Lead created"]).await;
    assert_eq!(m["channel"], "SMS");
    assert_eq!(m["replyStatus"], "Requested");
    assert_eq!(
        wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await,
        1
    );
    assert_eq!(crm_leads(&w).await, 1);
    // The reply is a request to Notify, in wa-parser's outbox.
    let ev: Value = wa_scalar::<Value>(
        &w,
        "SELECT payload FROM outbox WHERE type = 'notification.requested.waParser'",
    )
    .await;
    assert_eq!(ev["data"]["channel"], "sms");
    assert_eq!(ev["data"]["recipient"], "+254711000007");
    assert_eq!(ev["data"]["category"], "transactional");
    assert_eq!(ev["data"]["reference"], m["id"]);
    assert!(ev["data"]["body"]
        .as_str()
        .unwrap()
        .contains("Jane Wanjiku"));
    assert!(
        w.standin.sent().is_empty(),
        "SMS replies do not go to WhatsApp"
    );
}

#[tokio::test]
async fn the_sms_allowlist_refuses_other_sources() {
    let w = world_with(|s| s.sms_allowlist = vec!["10.0.0.0/8".parse().unwrap()]).await;
    let r = sms(
        &w,
        SMS_TOKEN,
        &[
            ("from", "+254711000008"),
            ("id", "ATXid_1"),
            ("text", "HELP"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await,
        0
    );
}
