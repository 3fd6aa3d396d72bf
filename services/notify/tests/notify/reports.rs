//! Delivery reports: verified callbacks, applied in progress order and never backwards.

use std::time::Duration;

use isp_standin_sms::twilio_signature;

use super::*;

#[tokio::test]
async fn twilio_status_callbacks_are_verified_and_never_move_a_delivery_backwards() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::Twilio)).await;
    let req = sms("+254712000004", "Ticket TCK-000042 is resolved.");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Delivered", 20).await;
    assert_eq!(row["provider"], "twilio");
    let sid = row["provider_message_id"].as_str().unwrap().to_string();
    assert!(sid.starts_with("SM"));
    assert_eq!(
        env.statuses(req.id).await,
        ["Queued", "Accepted", "Sent", "Delivered"]
    );

    let path = "/api/notify/callbacks/twilio/status";
    let url = format!("{}{path}", env.base);
    let token = env.gw.options().twilio_auth_token.clone();
    let sign = |f: &[(&str, String)]| Some(twilio_signature(&token, &url, f));
    // A late `sent`, correctly signed: acknowledged, nothing changes.
    let late = vec![
        ("MessageSid", sid.clone()),
        ("MessageStatus", "sent".to_string()),
    ];
    assert_eq!(env.post_form(path, &late, sign(&late)).await.0, 200);
    // A second outcome does not replace the first either.
    let failed = vec![
        ("MessageSid", sid.clone()),
        ("MessageStatus", "failed".to_string()),
        ("ErrorCode", "30008".to_string()),
    ];
    assert_eq!(env.post_form(path, &failed, sign(&failed)).await.0, 200);
    assert_eq!(env.status(req.id).await.as_deref(), Some("Delivered"));
    assert_eq!(env.statuses(req.id).await.len(), 4);

    // Unsigned, wrongly signed, or signed over other fields: 401.
    let forged = vec![
        ("MessageSid", sid.clone()),
        ("MessageStatus", "undelivered".to_string()),
    ];
    assert_eq!(env.post_form(path, &forged, None).await.0, 401);
    let wrong = Some(twilio_signature("wrong", &url, &forged));
    assert_eq!(env.post_form(path, &forged, wrong).await.0, 401);
    assert_eq!(env.post_form(path, &forged, sign(&late)).await.0, 401);
    // Signed but missing both fields: 400 naming each.
    let empty = vec![("AccountSid", "AC1".to_string())];
    let (code, body) = env.post_form(path, &empty, sign(&empty)).await;
    assert_eq!(code, 400);
    let paths: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["MessageSid", "MessageStatus"]);
}

#[tokio::test]
async fn africastalking_callbacks_need_the_path_token_and_apply_in_progress_order() {
    let mut env = Env::new(Options {
        // No report from the stand-in within the test: it posts its own.
        report_delay: Duration::from_secs(3600),
        ..Options::default()
    })
    .await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms("+254712000006", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Accepted", 20).await;
    let id = row["provider_message_id"].as_str().unwrap().to_string();
    let path = format!("/api/notify/callbacks/africastalking/{TOKEN}/delivery");
    let report = |s: &str| {
        vec![
            ("id", id.clone()),
            ("status", s.to_string()),
            ("phoneNumber", "+254712000006".to_string()),
        ]
    };
    // Wrong token: 404, nothing applied.
    let (code, _) = env
        .post_form(
            "/api/notify/callbacks/africastalking/guess/delivery",
            &report("Success"),
            None,
        )
        .await;
    assert_eq!(code, 404);
    assert_eq!(env.status(req.id).await.as_deref(), Some("Accepted"));
    // Out of order: Success, then a late Sent, then Success again.
    assert_eq!(env.post_form(&path, &report("Success"), None).await.0, 200);
    assert_eq!(env.post_form(&path, &report("Sent"), None).await.0, 200);
    assert_eq!(env.post_form(&path, &report("Success"), None).await.0, 200);
    assert_eq!(env.status(req.id).await.as_deref(), Some("Delivered"));
    assert_eq!(
        env.statuses(req.id).await,
        ["Queued", "Accepted", "Delivered"]
    );
    // Bad input: every missing field named; an unknown status named.
    let (code, body) = env
        .post_form(&path, &[("networkCode", "63902".to_string())], None)
        .await;
    assert_eq!(code, 400);
    assert_eq!(body["errors"][0]["path"], "id");
    assert_eq!(body["errors"][1]["path"], "status");
    let (code, body) = env.post_form(&path, &report("Teleported"), None).await;
    assert_eq!(code, 400);
    assert_eq!(body["errors"][0]["path"], "status");
}

#[tokio::test]
async fn a_report_that_overtakes_the_record_of_its_send_is_applied_when_that_lands() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let path = format!("/api/notify/callbacks/africastalking/{TOKEN}/delivery");
    // The report for a message id we have not recorded yet.
    let (code, _) = env
        .post_form(
            &path,
            &[
                ("id", "ATXid_early".to_string()),
                ("status", "Success".to_string()),
            ],
            None,
        )
        .await;
    assert_eq!(code, 200);
    let pool = env.pool();
    // Now the worker's record of that send (as if it committed just after).
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO deliveries (id, requester, channel, recipient, body, category, status, attempts) \
         VALUES ($1, 'support', 'sms', '+254712000020', 'Hi', 'transactional', 'Queued', 1)",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    svc_notify::store::lock_message(&mut tx, "africastalking", "ATXid_early")
        .await
        .unwrap();
    svc_notify::store::advance(
        &mut tx,
        id,
        DeliveryStatus::Accepted,
        svc_notify::store::Change {
            provider: Some("africastalking"),
            provider_message_id: Some("ATXid_early"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    svc_notify::store::apply_early_reports(&mut tx, id, "africastalking", "ATXid_early")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(env.status(id).await.as_deref(), Some("Delivered"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM early_reports")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_undelivered_report_records_the_networks_reason() {
    let mut env = Env::new(Options {
        at_report_status: "Failed".into(),
        ..Options::default()
    })
    .await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms("+254712000007", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Undelivered", 20).await;
    assert_eq!(row["failure_reason"], "DeliveryFailure");
    let last = env.events(req.id).await.pop().unwrap();
    assert_eq!(last["failureReason"], "DeliveryFailure");
}
