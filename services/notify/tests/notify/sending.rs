//! Sending: once per request, retries with backoff, failures, SMTP, the log provider, the rate.

use std::time::Duration;

use super::*;

#[tokio::test]
async fn a_request_is_sent_once_through_africastalking_and_reported_accepted_then_delivered() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms(
        "0712 345 678",
        "Invoice INV-000001: KES 2,500.00 due 2026-12-05.",
    );
    // The same request delivered twice (a requester's retry): one send.
    env.request(&req).await;
    env.request(&req).await;
    let row = env.wait_status(req.id, "Delivered", 20).await;
    assert_eq!(row["provider"], "africastalking");
    assert_eq!(row["recipient"], "+254712345678");
    assert_eq!(row["cost"], 0.8);
    assert_eq!(row["cost_currency"], "KES");
    let sent = env.gw.sms();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, "+254712345678");
    assert_eq!(sent[0].message, req.body);
    assert_eq!(sent[0].from.as_deref(), Some("ISP"));
    assert_eq!(row["provider_message_id"], sent[0].message_id.as_str());
    // Accepted (AT 101) is not Delivered; the report made it Delivered.
    assert_eq!(
        env.statuses(req.id).await,
        ["Queued", "Accepted", "Delivered"]
    );
    let last = env.events(req.id).await.pop().unwrap();
    assert_eq!(last["requester"], "support");
    assert_eq!(last["reference"], req.reference.clone().unwrap().as_str());
    assert_eq!(last["providerMessageId"], sent[0].message_id.as_str());
    assert_eq!(last["cost"], "0.8000");
    assert_eq!(last["costCurrency"], "KES");
    assert_eq!(last["channel"], "sms");
    // A third copy, given time to arrive: still one send.
    env.request(&req).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(env.gw.attempts(), 1);
}

#[tokio::test]
async fn notify_stopped_while_100_are_requested_sends_all_of_them_once_when_it_starts() {
    let mut env = Env::new(Options::default()).await;
    let reqs: Vec<_> = (0..100)
        .map(|i| {
            sms(
                &format!("+2547{:08}", 10_000_000 + i),
                &format!("Outage notice {i}"),
            )
        })
        .collect();
    for r in &reqs {
        env.request(r).await;
    }
    // Published while no Notify runs; some twice, as a requester's retry would.
    for r in reqs.iter().take(10) {
        env.request(r).await;
    }
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let all = eventually(60, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'Delivered'")
                .fetch_one(&env.pool())
                .await
                .unwrap();
        (n == 100).then_some(())
    })
    .await;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM deliveries GROUP BY 1 ORDER BY 1")
            .fetch_all(&env.pool())
            .await
            .unwrap();
    assert!(
        all.is_some(),
        "not all 100 delivered: {counts:?}, {} sent, {} callbacks",
        env.gw.sms().len(),
        env.gw.callbacks().len()
    );
    let sent = env.gw.sms();
    assert_eq!(sent.len(), 100, "each sent once");
    let mut bodies: Vec<_> = sent.iter().map(|s| s.message.clone()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 100);
    assert_eq!(env.gw.attempts(), 100);
}

#[tokio::test]
async fn a_gateway_answering_500_for_a_while_is_retried_with_backoff_and_the_message_sent() {
    let mut env = Env::new(Options::default()).await;
    env.gw.fail_next(3);
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms(
        "+254712000001",
        "Your payment of KES 1,000.00 was received.",
    );
    env.request(&req).await;
    let row = env.wait_status(req.id, "Delivered", 30).await;
    assert_eq!(row["attempts"], 4);
    assert_eq!(env.gw.attempts(), 4);
    assert_eq!(env.gw.sms().len(), 1);
    assert!(row["failure_reason"].is_null());
    assert!(row["last_error"].as_str().unwrap().contains("500"));
    // Retries do not publish: the requester sees Queued, then progress.
    assert_eq!(
        env.statuses(req.id).await,
        ["Queued", "Accepted", "Delivered"]
    );
}

#[tokio::test]
async fn a_gateway_that_stays_down_fails_the_message_after_the_attempt_limit() {
    let mut env = Env::new(Options::default()).await;
    env.gw.fail_next(100);
    let mut s = env.settings(Gateway::Twilio);
    s.max_attempts = 3;
    env.start(s).await;
    let req = sms("+254712000002", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Failed", 30).await;
    assert_eq!(env.gw.attempts(), 3);
    let reason = row["failure_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Retries exhausted after 3 attempts"),
        "{reason}"
    );
    assert_eq!(env.statuses(req.id).await, ["Queued", "Failed"]);
}

#[tokio::test]
async fn an_invalid_number_fails_once_with_the_gateways_reason() {
    let mut env = Env::new(Options::default()).await;
    env.gw.mark_invalid("+254712000003");
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms("+254712000003", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Failed", 20).await;
    assert_eq!(row["failure_reason"], "InvalidPhoneNumber (403)");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(env.gw.attempts(), 1, "a permanent failure is not retried");
    assert_eq!(env.statuses(req.id).await, ["Queued", "Failed"]);
    let last = env.events(req.id).await.pop().unwrap();
    assert_eq!(last["failureReason"], "InvalidPhoneNumber (403)");
    // Not a phone number at all: refused without asking the gateway.
    let bad = sms("not-a-number", "Hello");
    env.request(&bad).await;
    let row = env.wait_status(bad.id, "Failed", 20).await;
    assert!(row["failure_reason"]
        .as_str()
        .unwrap()
        .starts_with("InvalidRecipient"));
    assert_eq!(row["provider"], "none");
    assert_eq!(env.gw.attempts(), 1);
}

#[tokio::test]
async fn email_goes_through_smtp_and_a_refused_address_fails_at_once() {
    let mut env = Env::new(Options::default()).await;
    env.gw.refuse_address("gone@example.com");
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let email = |to: &str, subject: Option<&str>, body: &str| NotificationRequest {
        channel: NotificationChannel::Email,
        recipient: to.into(),
        subject: subject.map(String::from),
        ..sms("", body)
    };
    let mail = email(
        "jane@example.com",
        Some("Invoice INV-000001"),
        "Your invoice of KES 2,500.00 is due on 2026-12-05.",
    );
    let gone = email("gone@example.com", None, "Hello");
    let bad = email("not an address", None, "Hello");
    env.request(&mail).await;
    env.request(&gone).await;
    env.request(&bad).await;
    let row = env.wait_status(mail.id, "Sent", 20).await;
    assert_eq!(row["provider"], "smtp");
    let emails = env.gw.emails();
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].to, ["jane@example.com"]);
    assert!(emails[0].data.contains("Subject: Invoice INV-000001"));
    assert!(emails[0]
        .data
        .contains("Your invoice of KES 2,500.00 is due on 2026-12-05."));
    assert!(emails[0]
        .data
        .contains(row["provider_message_id"].as_str().unwrap()));
    let row = env.wait_status(gone.id, "Failed", 20).await;
    assert!(
        row["failure_reason"].as_str().unwrap().contains("550"),
        "{row}"
    );
    assert_eq!(row["attempts"], 1);
    let row = env.wait_status(bad.id, "Failed", 20).await;
    assert!(row["failure_reason"]
        .as_str()
        .unwrap()
        .starts_with("InvalidRecipient"));
}

#[tokio::test]
async fn with_no_gateway_configured_the_log_provider_sends() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::Log)).await;
    let req = sms("+254712000013", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Sent", 20).await;
    assert_eq!(row["provider"], "log");
    assert_eq!(env.gw.attempts(), 0);
    assert_eq!(env.statuses(req.id).await, ["Queued", "Sent"]);
}

#[tokio::test]
async fn a_send_rate_spaces_the_sends() {
    let mut env = Env::new(Options::default()).await;
    let mut s = env.settings(Gateway::AfricasTalking);
    s.sms_rate_per_second = 5.0;
    let reqs: Vec<_> = (0..6)
        .map(|i| sms(&format!("+2547120001{i:02}"), "Hi"))
        .collect();
    for r in &reqs {
        env.request(r).await;
    }
    env.start(s).await;
    for r in &reqs {
        env.wait_status(r.id, "Delivered", 30).await;
    }
    // Six sends at 5 per second take at least a second from first to last.
    let accepted: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM outbox WHERE type = 'notification.status' \
         AND payload->'data'->>'status' = 'Accepted' ORDER BY created_at",
    )
    .fetch_all(&env.pool())
    .await
    .unwrap();
    assert_eq!(accepted.len(), 6);
    let spread = accepted[5] - accepted[0];
    assert!(
        spread >= chrono::Duration::milliseconds(900),
        "spread {spread}"
    );
}
