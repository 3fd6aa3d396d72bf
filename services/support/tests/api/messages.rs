//! Messages to customers: invoices and ticket changes texted once, delivery reports.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn an_invoice_is_texted_and_emailed_once_with_the_rendered_template() {
    let app = app().await;
    let admin = app.admin_token().await;
    let sub = subscriber(Uuid::now_v7(), "0722 000 444");
    let sub = SubscriberSnapshot {
        contact_phone: Some("+254722000444".into()),
        ..sub
    };
    known_subscriber(&app, &sub).await;
    let invoice = InvoiceSnapshot {
        id: Uuid::now_v7(),
        invoice_number: "INV-000123".into(),
        subscriber: sub.id,
        amount_due: rust_decimal::Decimal::new(250000, 2),
        due_date: chrono::NaiveDate::from_ymd_opt(2026, 12, 31).unwrap(),
        status: isp_events::options::InvoiceStatus::Unpaid,
        updated_at: chrono::Utc::now(),
    };
    let ev = publish(&app, "billing", &InvoiceCreated(invoice.clone())).await;
    processed(&app, &ev).await;
    let pool = app.admin_pool().await;
    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT type, recipient, content, status, subject FROM support.messages
         WHERE trigger_event = 'invoice.created' ORDER BY type DESC",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "SMS");
    assert_eq!(rows[0].1, "+254722000444");
    assert_eq!(
        rows[0].2,
        format!("Dear Amina, invoice INV-000123 for KES 2500.00 is due on 31 Dec 2026. Pay by M-Pesa to account {}.", sub.account_number)
    );
    assert_eq!(rows[0].3, "Queued");
    assert_eq!(rows[1].0, "Email");
    assert_eq!(rows[1].1, "amina@example.com");
    assert_eq!(rows[1].4.as_deref(), Some("Invoice INV-000123"));
    // Notify was asked in the same transaction, with the text as sent.
    let requests: Vec<Value> = sqlx::query_scalar(
        "SELECT payload->'data' FROM support.outbox WHERE type = 'notification.requested.support' ORDER BY created_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["body"], rows[0].2.as_str());
    assert_eq!(requests[0]["category"], "transactional");

    // The same event delivered again (its processed mark lost, as after a restore):
    // still one message per recipient and channel.
    sqlx::query("DELETE FROM support.processed_events WHERE event_id = $1")
        .bind(ev.id)
        .execute(&pool)
        .await
        .unwrap();
    publish_event(
        &app,
        &InvoiceCreated::nats_subject(),
        &ev,
        &Uuid::new_v4().to_string(),
    )
    .await;
    processed(&app, &ev).await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM support.messages WHERE trigger_event = 'invoice.created'"
        )
        .await,
        2
    );

    // Admin turns overdue notices off: an overdue invoice sends nothing.
    let r = app
        .get(
            "/api/support/notificationTriggers?where[triggerEvent][equals]=invoice.overdue",
            &admin,
        )
        .await;
    let trig = r.body["docs"][0]["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/support/notificationTriggers/{trig}"),
            &admin,
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let ev = publish(&app, "billing", &InvoiceOverdue(invoice.clone())).await;
    processed(&app, &ev).await;
    // Payment received (SMS only when email is switched off for it).
    let r = app
        .get(
            "/api/support/notificationTriggers?where[triggerEvent][equals]=payment.received",
            &admin,
        )
        .await;
    let trig = r.body["docs"][0]["id"].as_str().unwrap().to_string();
    app.patch(
        &format!("/api/support/notificationTriggers/{trig}"),
        &admin,
        json!({"sendEmail": false}),
    )
    .await;
    let ev = publish(
        &app,
        "billing",
        &PaymentReceived {
            id: Uuid::now_v7(),
            payment_reference: "NLJ7RT61SV".into(),
            invoice: invoice.id,
            subscriber: sub.id,
            amount_paid: rust_decimal::Decimal::new(1500, 0),
            payment_method: isp_events::options::PaymentMethod::Mpesa,
            payment_date: chrono::NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(),
            account_balance: rust_decimal::Decimal::ZERO,
        },
    )
    .await;
    processed(&app, &ev).await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT trigger_event, content FROM support.messages WHERE trigger_event <> 'invoice.created'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "payment.received");
    assert_eq!(
        rows[0].1,
        "Dear Amina, we received KES 1500.00 (ref NLJ7RT61SV) on 2 Dec 2026. Thank you."
    );
    // Suspension, in the ISP's time zone.
    let ev = publish(
        &app,
        "billing",
        &SubscriberSuspended(SubscriberStatusChange {
            subscriber_id: sub.id,
            account_number: sub.account_number.clone(),
            reason: Some("Invoice INV-000123 overdue".into()),
            at: "2026-12-31T22:30:00Z".parse().unwrap(),
        }),
    )
    .await;
    processed(&app, &ev).await;
    let text: String = sqlx::query_scalar(
        "SELECT content FROM support.messages WHERE trigger_event = 'subscriber.suspended' AND type = 'SMS'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(text.contains("suspended on 1 Jan 2027"), "{text}");
}

#[tokio::test]
async fn delivery_reports_move_a_message_forward_only() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    let sub = subscriber(Uuid::now_v7(), "+254722000555");
    known_subscriber(&app, &sub).await;
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"subscriber": sub.id, "subject": "Router", "description": "Blinking", "priority": "Low"}),
        )
        .await;
    let ticket = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .post(
            &format!("/api/support/tickets/{ticket}/messages"),
            &token,
            json!({"channel": "SMS", "content": "Hi {{ firstName }}, about {{ ticketId }}: a technician comes tomorrow."}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let msg = r.body["doc"].clone();
    assert_eq!(msg["triggerEvent"], "manual.reply");
    assert_eq!(msg["recipient"], "+254722000555");
    assert_eq!(
        msg["content"],
        "Hi Amina, about TCK-000001: a technician comes tomorrow."
    );
    assert_eq!(msg["status"], "Queued");
    assert_eq!(msg["ticket"], ticket.as_str());
    assert!(msg["sentBy"].is_string());
    let id: Uuid = msg["id"].as_str().unwrap().parse().unwrap();
    let report = |status: DeliveryStatus, secs: i64| NotificationStatus {
        delivery_id: id,
        status,
        provider: "africastalking".into(),
        at: chrono::Utc::now() + chrono::Duration::seconds(secs),
        requester: Some("support".into()),
        reference: Some(id.to_string()),
        channel: Some(NotificationChannel::Sms),
        recipient: Some("+254722000555".into()),
        provider_message_id: Some("ATXid_1".into()),
        cost: Some(rust_decimal::Decimal::new(8000, 4)),
        cost_currency: Some("KES".into()),
        failure_reason: None,
    };
    let e1 = publish(&app, "notify", &report(DeliveryStatus::Accepted, 0)).await;
    let e2 = publish(&app, "notify", &report(DeliveryStatus::Delivered, 2)).await;
    let e3 = publish(&app, "notify", &report(DeliveryStatus::Sent, 1)).await;
    for e in [&e1, &e2, &e3] {
        processed(&app, e).await;
    }
    let r = app
        .get(&format!("/api/support/tickets/{ticket}/messages"), &token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["totalDocs"], 1);
    let m = &r.body["docs"][0];
    assert_eq!(m["status"], "Delivered", "{m}");
    assert_eq!(m["providerMessageId"], "ATXid_1");
    assert_eq!(m["cost"], "0.8000");

    // Bad input names every field; an email needs an address.
    let r = app
        .post(
            &format!("/api/support/tickets/{ticket}/messages"),
            &token,
            json!({"channel": "Fax", "template": "nope", "content": "x", "cc": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(paths(&r), ["cc", "channel", "content", "template"]);
    let no_mail = SubscriberSnapshot {
        id: Uuid::now_v7(),
        email: None,
        ..subscriber(Uuid::now_v7(), "+254722000556")
    };
    known_subscriber(&app, &no_mail).await;
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"subscriber": no_mail.id, "subject": "Bill", "description": "Question", "priority": "Low"}),
        )
        .await;
    let t2 = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .post(
            &format!("/api/support/tickets/{t2}/messages"),
            &token,
            json!({"channel": "Email", "content": "Hello"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(paths(&r), ["channel"]);
    assert_eq!(
        count(&app, "SELECT count(*) FROM support.messages").await,
        1
    );
}

#[tokio::test]
async fn a_ticket_status_change_is_texted_to_the_customer() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    let sub = subscriber(Uuid::now_v7(), "+254722000666");
    known_subscriber(&app, &sub).await;
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"subscriber": sub.id, "subject": "No internet", "description": "x", "priority": "High"}),
        )
        .await;
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/support/tickets/{id}"),
            &token,
            json!({"status": "In Progress"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A change that is not a status change says nothing.
    app.patch(
        &format!("/api/support/tickets/{id}"),
        &token,
        json!({"priority": "Medium"}),
    )
    .await;
    wait_count(
        &app,
        "SELECT count(*) FROM support.messages WHERE trigger_event = 'ticket.updated' AND type = 'SMS'",
        1,
    )
    .await;
    // Let the second update be handled too, then check nothing more was sent.
    wait_count(
        &app,
        "SELECT count(*) FROM support.processed_events WHERE consumer = 'support-tickets'",
        3,
    )
    .await;
    let pool = app.admin_pool().await;
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT content FROM support.messages WHERE trigger_event = 'ticket.updated' AND type = 'SMS'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        texts,
        ["Dear Amina, your ticket TCK-000001 (No internet) is now In Progress."]
    );
}
