//! The suppression list: numbers added by gateway errors, opt-out callbacks and STOP replies.

use isp_standin_sms::twilio_signature;

use super::*;

async fn outbox_of(env: &Env, ty: &str) -> Vec<Value> {
    sqlx::query_scalar("SELECT payload->'data' FROM outbox WHERE type = $1 ORDER BY created_at")
        .bind(ty)
        .fetch_all(&env.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn twilio_21610_fails_the_message_and_suppresses_the_number() {
    let mut env = Env::new(Options::default()).await;
    env.gw.mark_opted_out("+254712000005");
    env.start(env.settings(Gateway::Twilio)).await;
    let req = sms("+254712000005", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Failed", 20).await;
    assert_eq!(
        row["failure_reason"],
        "Twilio 21610: Attempt to send to unsubscribed recipient"
    );
    let ev = outbox_of(&env, "suppression.added").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["recipient"], "+254712000005");
    assert_eq!(ev[0]["source"], "twilio-21610");
    // A promotional send to it is now refused by Notify itself.
    let promo = NotificationRequest {
        category: NotificationCategory::Promotional,
        ..sms("+254712000005", "50% off")
    };
    env.request(&promo).await;
    let row = env.wait_status(promo.id, "Failed", 20).await;
    assert!(row["failure_reason"]
        .as_str()
        .unwrap()
        .starts_with("Suppressed"));
    assert_eq!(env.gw.attempts(), 1);
}

#[tokio::test]
async fn opt_out_callback_and_stop_replies_put_numbers_on_the_suppression_list() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let base = format!("/api/notify/callbacks/africastalking/{TOKEN}");
    let optout = format!("{base}/optout");
    let inbound_path = format!("{base}/inbound");
    let (code, _) = env
        .post_form(
            &optout,
            &[
                ("senderId", "ISP".into()),
                ("phoneNumber", "0712000008".into()),
            ],
            None,
        )
        .await;
    assert_eq!(code, 200);
    // The same opt-out again changes nothing.
    env.post_form(
        &optout,
        &[
            ("senderId", "ISP".into()),
            ("phoneNumber", "+254712000008".into()),
        ],
        None,
    )
    .await;
    let inbound = |from: &str, text: &str| {
        vec![
            ("from", from.to_string()),
            ("to", "40404".to_string()),
            ("text", text.to_string()),
            ("id", Uuid::new_v4().to_string()),
            ("date", "2026-12-01 10:00:00".to_string()),
        ]
    };
    let (code, _) = env
        .post_form(&inbound_path, &inbound("+254712000009", "stop"), None)
        .await;
    assert_eq!(code, 200);
    // Not a keyword: acknowledged, ignored (lead texts are wa-parser's).
    let (code, _) = env
        .post_form(
            &inbound_path,
            &inbound("+254712000010", "Jane 0722 Unit 4B"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let (code, body) = env
        .post_form(&optout, &[("senderId", "ISP".into())], None)
        .await;
    assert_eq!(code, 400);
    assert_eq!(body["errors"][0]["path"], "phoneNumber");
    let (code, _) = env
        .post_form(
            "/api/notify/callbacks/africastalking/wrong-token/optout",
            &[("phoneNumber", "+254712000011".into())],
            None,
        )
        .await;
    assert_eq!(code, 404);

    let list: Vec<(String, String)> =
        sqlx::query_as("SELECT recipient, source FROM suppressions ORDER BY recipient")
            .fetch_all(&env.pool())
            .await
            .unwrap();
    assert_eq!(
        list,
        [
            (
                "+254712000008".to_string(),
                "africastalking-optout".to_string()
            ),
            ("+254712000009".to_string(), "inbound-stop".to_string())
        ]
    );
    assert_eq!(outbox_of(&env, "suppression.added").await.len(), 2);

    // Promotional to a suppressed number: refused; transactional still goes.
    let promo = NotificationRequest {
        category: NotificationCategory::Promotional,
        ..sms("+254712000009", "Offer")
    };
    let outage = sms("+254712000009", "Outage in your building");
    env.request(&promo).await;
    env.request(&outage).await;
    env.wait_status(promo.id, "Failed", 20).await;
    env.wait_status(outage.id, "Delivered", 20).await;
    assert_eq!(env.gw.sms().len(), 1);

    // START lifts it and says so.
    let (code, _) = env
        .post_form(&inbound_path, &inbound("+254712000009", "START"), None)
        .await;
    assert_eq!(code, 200);
    let removed = outbox_of(&env, "suppression.removed").await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["recipient"], "+254712000009");
}

#[tokio::test]
async fn twilio_inbound_stop_is_verified_and_suppresses() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::Twilio)).await;
    let path = "/api/notify/callbacks/twilio/inbound";
    let url = format!("{}{path}", env.base);
    let token = env.gw.options().twilio_auth_token.clone();
    let f = vec![
        ("From", "+254712000012".to_string()),
        ("To", "+15005550006".to_string()),
        ("Body", "STOP".to_string()),
        ("MessageSid", "SMx".to_string()),
    ];
    assert_eq!(env.post_form(path, &f, None).await.0, 401);
    let (code, body) = env
        .post_form(path, &f, Some(twilio_signature(&token, &url, &f)))
        .await;
    assert_eq!(code, 200);
    assert!(body.as_str().unwrap().contains("<Response/>"));
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM suppressions WHERE recipient = '+254712000012'")
            .fetch_one(&env.pool())
            .await
            .unwrap();
    assert_eq!(n, 1);
}
