//! Support over real HTTP, Postgres and NATS. Other services' events (Billing's
//! subscribers and invoices, NOC's resources and Zabbix events, Notify's reports)
//! are published onto JetStream by the tests themselves, as those services would.

use isp_events::options::SubscriberStatus;
use isp_events::payloads::*;
use isp_events::{CloudEvent, EventPayload};
use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_testkit::{eventually, Res, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn core() -> (ServiceInfo, StartFn) {
    (svc_core::INFO, |c| Box::pin(svc_core::start(c)))
}
fn support() -> (ServiceInfo, StartFn) {
    (svc_support::INFO, |c| Box::pin(svc_support::start(c)))
}

async fn app() -> TestApp {
    TestApp::spawn(&[core(), support()]).await
}

async fn publish_event(app: &TestApp, subject: &str, ev: &CloudEvent, msg_id: &str) {
    let js = async_nats::jetstream::new(app.shared.nats.clone());
    isp_events::ensure_stream(&js).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject.to_string(), headers, ev.to_json().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Publishes as the producing service would; returns the event.
async fn publish<P: EventPayload>(app: &TestApp, source: &str, payload: &P) -> CloudEvent {
    let ev = CloudEvent::new(source, payload).unwrap();
    publish_event(app, &P::nats_subject(), &ev, &ev.id.to_string()).await;
    ev
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let pool = app.admin_pool().await;
    sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
}

/// Waits until `sql` (a count) reaches `n`.
async fn wait_count(app: &TestApp, sql: &str, n: i64) {
    let pool = app.admin_pool().await;
    let ok = eventually(20, || {
        let pool = pool.clone();
        async move {
            let c: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            (c == n).then_some(())
        }
    })
    .await;
    let last: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    assert!(ok.is_some(), "{sql}: wanted {n}, last saw {last}");
}

/// Waits until Support has handled (or deliberately ignored) an event.
async fn processed(app: &TestApp, ev: &CloudEvent) {
    wait_count(
        app,
        &format!(
            "SELECT count(*) FROM support.processed_events WHERE event_id = '{}'",
            ev.id
        ),
        1,
    )
    .await;
}

fn subscriber(plan: Uuid, phone: &str) -> SubscriberSnapshot {
    SubscriberSnapshot {
        id: Uuid::now_v7(),
        account_number: format!("ACC-{}", &Uuid::new_v4().simple().to_string()[..6]),
        first_name: "Amina".into(),
        last_name: "Otieno".into(),
        mpesa_number: "+254711000111".into(),
        contact_phone: Some(phone.into()),
        email: Some("amina@example.com".into()),
        status: isp_events::options::SubscriberStatus::Active,
        service_plan: plan,
        billing_cycle: isp_events::options::BillingCycle::Monthly,
        next_due_date: None,
        address_notes: None,
        service_location: None,
        building: None,
        lead_id: None,
        updated_at: chrono::Utc::now(),
    }
}

async fn known_subscriber(app: &TestApp, s: &SubscriberSnapshot) {
    let ev = publish(app, "billing", &SubscriberCreated(s.clone())).await;
    processed(app, &ev).await;
}

fn paths(r: &Res) -> Vec<String> {
    let mut p = r.error_paths();
    p.sort();
    p
}

/// An active Support Agent, known to Support's staff projection.
async fn agent(app: &TestApp) -> (String, String) {
    let (token, id) = app.staff_token("Support Agent").await;
    wait_count(
        app,
        &format!("SELECT count(*) FROM support.staff WHERE id = '{id}'"),
        1,
    )
    .await;
    (token, id)
}

#[tokio::test]
async fn tickets_are_numbered_checked_and_follow_the_status_workflow() {
    let app = app().await;
    let (token, agent_id) = agent(&app).await;
    let sub = subscriber(Uuid::now_v7(), "+254722000222");
    known_subscriber(&app, &sub).await;

    // Every missing field is named at once.
    let r = app.post("/api/support/tickets", &token, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(
        paths(&r),
        ["description", "priority", "subject", "subscriber"],
        "{:?}",
        r.body
    );
    // Unknown subscriber, a non-agent assignee and a bad priority, all at once.
    let (_, tech) = app.staff_token("Technician").await;
    wait_count(
        &app,
        &format!("SELECT count(*) FROM support.staff WHERE id = '{tech}'"),
        1,
    )
    .await;
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"subscriber": Uuid::now_v7(), "subject": "No internet", "description": "Since morning",
                   "priority": "High", "assignedTo": tech}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(paths(&r), ["assignedTo", "subscriber"], "{:?}", r.body);
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"subscriber": sub.id, "subject": "x", "description": "y", "priority": "Urgent"}),
        )
        .await;
    assert_eq!(paths(&r), ["priority"], "{:?}", r.body);
    // A network ticket has no subscriber; a new ticket is Open.
    let r = app
        .post(
            "/api/support/tickets",
            &token,
            json!({"kind": "Network", "subscriber": sub.id, "subject": "x", "description": "y",
                   "priority": "High", "status": "Closed"}),
        )
        .await;
    assert_eq!(paths(&r), ["status", "subscriber"], "{:?}", r.body);
    assert_eq!(count(&app, "SELECT count(*) FROM support.tickets").await, 0);

    let create = |subject: &'static str| {
        let (app, token, agent_id) = (&app, &token, agent_id.clone());
        async move {
            let r = app
                .post(
                    "/api/support/tickets",
                    token,
                    json!({"subscriber": sub.id, "subject": subject, "description": "Red LOS light",
                           "priority": "Medium", "assignedTo": agent_id}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            r.body["doc"].clone()
        }
    };
    let t1 = create("No internet").await;
    let t2 = create("Slow").await;
    assert_eq!(t1["ticketID"], "TCK-000001");
    assert_eq!(t2["ticketID"], "TCK-000002");
    assert_eq!(t1["status"], "Open");
    assert_eq!(t1["kind"], "Customer");
    let id = t1["id"].as_str().unwrap().to_string();
    let path = format!("/api/support/tickets/{id}");

    // Open -> In Progress -> Resolved -> (reopened) Open -> Resolved -> Closed.
    for (to, ok) in [
        ("In Progress", true),
        ("Closed", false),
        ("Resolved", true),
        ("Open", true),
        ("Resolved", true),
        ("Closed", true),
    ] {
        let r = app.patch(&path, &token, json!({"status": to})).await;
        if ok {
            assert_eq!(r.status, StatusCode::OK, "to {to}: {:?}", r.body);
            assert_eq!(r.body["doc"]["status"], to);
        } else {
            assert_eq!(r.status, StatusCode::CONFLICT, "to {to}: {:?}", r.body);
            assert_eq!(r.error_path(), Some("status"));
        }
    }
    // Closed is final: neither the status nor anything else changes.
    let r = app.patch(&path, &token, json!({"status": "Open"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let r = app
        .patch(&path, &token, json!({"subject": "changed"}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let r = app
        .patch(
            &format!("/api/support/tickets/{}", t2["id"].as_str().unwrap()),
            &token,
            json!({"subscriber": Uuid::now_v7(), "ticketID": "TCK-9"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);

    // Every change went out as ticket.created / ticket.updated.
    let created = count(
        &app,
        "SELECT count(*) FROM support.outbox WHERE type = 'ticket.created'",
    )
    .await;
    let updated = count(
        &app,
        "SELECT count(*) FROM support.outbox WHERE type = 'ticket.updated'",
    )
    .await;
    assert_eq!((created, updated), (2, 5));
    let pool = app.admin_pool().await;
    let last: Value = sqlx::query_scalar(
        "SELECT payload->'data' FROM support.outbox WHERE type = 'ticket.updated' ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(last["ticketId"], "TCK-000001");
    assert_eq!(last["status"], "Closed");
    assert_eq!(last["subscriber"], sub.id.to_string());
    assert_eq!(last["kind"], "Customer");
}

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

#[tokio::test]
async fn contacts_are_e164_unique_and_import_from_csv_by_line() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    let r = app
        .post(
            "/api/support/contacts",
            &token,
            json!({"phoneNumber": "0712 345 678", "fullName": "Jane Doe", "source": "Marketing List"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["phoneNumber"], "+254712345678");
    let r = app
        .post(
            "/api/support/contacts",
            &token,
            json!({"phoneNumber": "+254712345678"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("phoneNumber"));
    let r = app
        .post(
            "/api/support/contacts",
            &token,
            json!({"phoneNumber": "12", "extra": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(paths(&r), ["extra", "phoneNumber"]);

    let csv = "fullName,PhoneNumber,source\n\
               Ann One,0722000001,Fair\n\
               Bad Number,12345,Fair\n\
               Jane Again,+254712345678,Fair\n\
               Ben Two,0722 000 002,\n\
               Ann Twice,254722000001,Fair\n";
    let res = app
        .http
        .post(format!("{}/api/support/contacts/import", app.base))
        .header("authorization", format!("JWT {token}"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["imported"], 2, "{body}");
    let lines: Vec<u64> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 6], "{body}");
    assert!(body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["path"] == "phoneNumber"));
    assert_eq!(
        count(&app, "SELECT count(*) FROM support.contacts").await,
        3
    );
    // No phoneNumber column: nothing to import.
    let res = app
        .http
        .post(format!("{}/api/support/contacts/import", app.base))
        .header("authorization", format!("JWT {token}"))
        .body("name,phone\nA,0722000009\n")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn templates_are_checked_by_the_engine_and_defaults_ship_for_each_trigger() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    let r = app
        .get("/api/support/messageTemplates?limit=100", &token)
        .await;
    let mut triggers: Vec<String> = r.body["docs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["triggerEvent"].as_str().map(String::from))
        .collect();
    triggers.sort();
    assert_eq!(
        triggers,
        [
            "invoice.created",
            "invoice.overdue",
            "payment.received",
            "subscriber.activated",
            "subscriber.reactivated",
            "subscriber.suspended",
            "ticket.updated"
        ]
    );
    let r = app
        .post(
            "/api/support/messageTemplates",
            &token,
            json!({"templateName": "Outage Notice", "content": "Dear {{ firstName }}, {{ amountDue }} {{ balance }}",
                   "subject": "{{ oops"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(paths(&r), ["content", "subject"]);
    let msg = r.body["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("amountDue") && msg.contains("balance"),
        "{msg}"
    );
    // amountDue is fine where the trigger provides it.
    let r = app
        .post(
            "/api/support/messageTemplates",
            &token,
            json!({"templateName": "Outage Notice", "content": "Dear {{ firstName }}, the network in your area is down."}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .post(
            "/api/support/messageTemplates",
            &token,
            json!({"templateName": "Outage Notice", "content": "again"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("templateName"));
    // A second template for a trigger that has one is a conflict too.
    let r = app
        .post(
            "/api/support/messageTemplates",
            &token,
            json!({"templateName": "Another invoice", "triggerEvent": "invoice.created",
                   "content": "{{ invoiceNumber }}: {{ amountDue }}"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("triggerEvent"));
}

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

#[tokio::test]
async fn bulk_sends_filter_dedupe_suppress_schedule_and_report_progress() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    let (home, biz) = (Uuid::now_v7(), Uuid::now_v7());
    for (plan, name) in [(home, "Home"), (biz, "Business")] {
        let ev = publish(
            &app,
            "core",
            &PlanCreated(PlanSnapshot {
                id: plan,
                name: name.into(),
                download_speed: 10,
                upload_speed: 5,
                price: rust_decimal::Decimal::new(2500, 0),
                billing_cycle: isp_events::options::BillingCycle::Monthly,
                plan_enabled: true,
                active_for_new_signups: true,
                ip_assignment_type: "Dynamic".into(),
                static_ip_pool: None,
                updated_at: chrono::Utc::now(),
            }),
        )
        .await;
        processed(&app, &ev).await;
    }
    // Three on Home (two share a phone), one on Business, one Home but Suspended.
    let mut subs = vec![];
    for (plan, phone, status) in [
        (home, "+254722100001", "Active"),
        (home, "+254722100002", "Active"),
        (home, "+254722100002", "Active"),
        (biz, "+254722100003", "Active"),
        (home, "+254722100004", "Suspended"),
    ] {
        let s = SubscriberSnapshot {
            status: SubscriberStatus::parse(status).unwrap(),
            ..subscriber(plan, phone)
        };
        known_subscriber(&app, &s).await;
        subs.push(s);
    }
    let body = |extra: Value| {
        let mut b = json!({"audience": {"type": "subscribers", "plans": [home], "statuses": ["Active"]},
                           "channel": "SMS", "content": "Hi {{ firstName }}: maintenance tonight 22:00-23:00.",
                           "category": "Transactional", "triggerEvent": "bulk.outage"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // Dry run: count and sample, nothing stored.
    let r = app
        .post(
            "/api/support/messages/bulk",
            &token,
            body(json!({"dryRun": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["recipientCount"], 2);
    assert_eq!(r.body["duplicates"], 1);
    assert_eq!(
        r.body["sample"][0]["content"],
        "Hi Amina: maintenance tonight 22:00-23:00."
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM support.messages").await,
        0
    );

    let r = app
        .post("/api/support/messages/bulk", &token, body(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["recipientCount"], 2);
    assert_eq!(r.body["doc"]["bulkSend"], true);
    let parent = r.body["doc"]["id"].as_str().unwrap().to_string();
    wait_count(
        &app,
        &format!(
            "SELECT count(*) FROM support.messages WHERE parent = '{parent}' AND status = 'Queued'"
        ),
        2,
    )
    .await;
    let r = app
        .get(&format!("/api/support/messages/bulk/{parent}"), &token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["total"], 2);
    assert_eq!(r.body["queued"], 2);
    assert_eq!(r.body["doc"]["status"], "Queued");
    assert_eq!(r.body["doc"]["triggerEvent"], "bulk.outage");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM support.outbox WHERE type = 'notification.requested.support'"
        )
        .await,
        2
    );
    // Too late to cancel once queued.
    let r = app
        .post(
            &format!("/api/support/messages/bulk/{parent}/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // Promotional: the suppressed number is skipped (and counted), the footer added.
    let r = app
        .post(
            "/api/support/suppressions",
            &token,
            json!({"address": "0722 100 001"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["address"], "+254722100001");
    let tomorrow_noon = (chrono::Utc::now().with_timezone(&chrono_tz::Africa::Nairobi)
        + chrono::Duration::days(1))
    .date_naive()
    .and_hms_opt(12, 0, 0)
    .unwrap()
    .and_local_timezone(chrono_tz::Africa::Nairobi)
    .unwrap()
    .with_timezone(&chrono::Utc);
    let r = app
        .post(
            "/api/support/messages/bulk",
            &token,
            body(json!({"category": "Promotional", "triggerEvent": null,
                        "scheduledAt": tomorrow_noon.to_rfc3339(), "content": "Upgrade to 20 Mbps, {{ firstName }}!"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["recipientCount"], 1);
    assert_eq!(r.body["suppressed"], 1);
    assert_eq!(r.body["doc"]["status"], "Scheduled");
    let scheduled = r.body["doc"]["id"].as_str().unwrap().to_string();
    // Scheduled is one of the statuses the document lists, and a filter on it
    // finds the send.
    let doc = app.get("/api/support/openapi.json", &token).await;
    let statuses = &doc.body["components"]["schemas"]["Message"]["properties"]["status"]["enum"];
    assert!(
        statuses.as_array().unwrap().contains(&json!("Scheduled")),
        "{statuses}"
    );
    let r = app
        .get(
            "/api/support/messages?where[status][equals]=Scheduled",
            &token,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["docs"][0]["id"], json!(scheduled), "{:?}", r.body);
    // Scheduled for later: cancelled before it starts, nothing is sent.
    let r = app
        .post(
            &format!("/api/support/messages/bulk/{scheduled}/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["status"], "Cancelled");
    // Promotional at a time outside 08:00-18:00 EAT is held until 08:00.
    let tonight = tomorrow_noon + chrono::Duration::hours(9); // 21:00 EAT
    let r = app
        .post(
            "/api/support/messages/bulk",
            &token,
            body(json!({"category": "Promotional", "scheduledAt": tonight.to_rfc3339()})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let held: chrono::DateTime<chrono::Utc> =
        r.body["scheduledAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(held, tomorrow_noon + chrono::Duration::hours(20)); // 08:00 EAT the day after

    // Bad input: every field named.
    let r = app
        .post(
            "/api/support/messages/bulk",
            &token,
            json!({"audience": {"type": "subscribers", "plans": [home, Uuid::now_v7()], "statuses": ["Gone"]},
                   "channel": "Pigeon", "category": "Spam", "scheduledAt": "tomorrow", "content": "{{ nope }}"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(
        paths(&r),
        [
            "audience.plans.1",
            "audience.statuses.0",
            "category",
            "channel",
            "content",
            "scheduledAt"
        ]
    );
    let r = app
        .post(
            "/api/support/messages/bulk",
            &token,
            json!({"audience": {"type": "everyone"}, "channel": "SMS", "category": "Transactional"}),
        )
        .await;
    assert_eq!(paths(&r), ["audience.type", "content"], "{:?}", r.body);
}

#[tokio::test]
async fn promotional_sends_skip_the_suppression_list_and_carry_the_opt_out_footer() {
    // Open all day, so the test does not depend on the clock (the 08:00-18:00
    // default is covered above and in the unit tests).
    let app = TestApp::spawn(&[
        core(),
        (svc_support::INFO, |c| {
            Box::pin(svc_support::start_with(
                c,
                svc_support::Settings {
                    resolve_on_recovery: true,
                    opt_out_footer: "STOP*456*9*5#".into(),
                    promotional_hours: (0, 24),
                },
            ))
        }),
    ])
    .await;
    let (token, _) = agent(&app).await;
    let mut contacts = vec![];
    for phone in ["0722200001", "0722200002", "0722200003"] {
        let r = app
            .post(
                "/api/support/contacts",
                &token,
                json!({"phoneNumber": phone, "fullName": "Wanjiru Kamau"}),
            )
            .await;
        contacts.push(r.body["doc"]["id"].as_str().unwrap().to_string());
    }
    // Opted out by STOP at the gateway (through Notify) and by staff marking.
    let ev = publish(
        &app,
        "notify",
        &SuppressionAdded(SuppressionChange {
            recipient: "+254722200001".into(),
            channel: NotificationChannel::Sms,
            source: "inbound-stop".into(),
            detail: Some("STOP".into()),
            at: chrono::Utc::now(),
        }),
    )
    .await;
    processed(&app, &ev).await;
    let r = app
        .post(
            "/api/support/suppressions",
            &token,
            json!({"address": "+254722200002", "reason": "Asked on the phone"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .post(
            "/api/support/messages/bulk",
            &token,
            json!({"audience": {"type": "contacts", "contacts": contacts}, "channel": "SMS",
                   "content": "Karibu {{ firstName }}: 20 Mbps for the price of 10 this month.",
                   "category": "Promotional"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["recipientCount"], 1);
    assert_eq!(r.body["suppressed"], 2);
    let parent = r.body["doc"]["id"].as_str().unwrap().to_string();
    wait_count(
        &app,
        &format!("SELECT count(*) FROM support.messages WHERE parent = '{parent}'"),
        3,
    )
    .await;
    let r = app
        .get(&format!("/api/support/messages/bulk/{parent}"), &token)
        .await;
    assert_eq!(r.body["queued"], 1, "{:?}", r.body);
    assert_eq!(r.body["skipped"], 2);
    let pool = app.admin_pool().await;
    let (content, trigger): (String, String) = sqlx::query_as(
        "SELECT content, trigger_event FROM support.messages WHERE parent = $1::uuid AND status = 'Queued'",
    )
    .bind(&parent)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        content,
        "Karibu Wanjiru: 20 Mbps for the price of 10 this month.\nSTOP*456*9*5#"
    );
    assert_eq!(trigger, "bulk.promotional");
    let req: Value = sqlx::query_scalar(
        "SELECT payload->'data' FROM support.outbox WHERE type = 'notification.requested.support'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(req["category"], "promotional");
    assert_eq!(req["recipient"], "+254722200003");
    // START at the gateway takes the number off the list again.
    let ev = publish(
        &app,
        "notify",
        &SuppressionRemoved(SuppressionChange {
            recipient: "+254722200001".into(),
            channel: NotificationChannel::Sms,
            source: "inbound-start".into(),
            detail: None,
            at: chrono::Utc::now(),
        }),
    )
    .await;
    processed(&app, &ev).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM support.suppressions").await,
        1
    );
}

fn zabbix(event: &str, host: &str, ip: Option<&str>) -> ZabbixEvent {
    ZabbixEvent {
        event_id: event.into(),
        name: "High latency".into(),
        severity: "High".into(),
        host: host.into(),
        host_ip: ip.map(String::from),
        trigger_id: Some("77".into()),
        at: chrono::Utc::now(),
        recovery_of: None,
    }
}

#[tokio::test]
async fn zabbix_problems_become_one_network_ticket_each_and_recoveries_resolve_them() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    // A NOC router at 10.0.0.1 with two active subscribers behind it.
    let router = ResourceSnapshot {
        id: Uuid::now_v7(),
        resource_name: "core-rtr-1".into(),
        resource_type: isp_events::options::ResourceType::Router,
        status: isp_events::options::ResourceStatus::Deployed,
        location: None,
        management_ip: Some("10.0.0.1".into()),
        updated_at: chrono::Utc::now(),
    };
    publish(&app, "noc", &ResourceCreated(router.clone())).await;
    for (i, status) in ["Active", "Active", "Deactivated"].iter().enumerate() {
        let s = SubscriberSnapshot {
            status: SubscriberStatus::parse(status).unwrap(),
            ..subscriber(Uuid::now_v7(), &format!("+25472200070{i}"))
        };
        // NOC's router may be heard of before Billing's subscriber.
        publish(
            &app,
            "noc",
            &SubscriberNetworkUpdated {
                subscriber_id: s.id,
                connection_type: isp_events::options::ConnectionType::Pppoe,
                assigned_ip: None,
                router: Some(router.id),
                at: Some(chrono::Utc::now()),
            },
        )
        .await;
        known_subscriber(&app, &s).await;
    }
    let problem = zabbix("9001", "core-rtr-1.lan", Some("10.0.0.1"));
    for _ in 0..3 {
        // Escalation steps and redeliveries: separate events, one problem.
        let ev = publish(&app, "noc", &NetworkProblem(problem.clone())).await;
        processed(&app, &ev).await;
    }
    let r = app
        .get("/api/support/tickets?where[kind][equals]=Network", &token)
        .await;
    assert_eq!(r.body["totalDocs"], 1, "{:?}", r.body);
    let t = r.body["docs"][0].clone();
    assert_eq!(t["ticketID"], "NET-9001");
    assert_eq!(t["priority"], "High");
    assert_eq!(t["status"], "Open");
    assert!(t["subscriber"].is_null());
    assert_eq!(t["networkHost"], "core-rtr-1.lan");
    assert_eq!(t["networkSeverity"], "High");
    assert_eq!(t["resource"], router.id.to_string());
    assert_eq!(t["affectedSubscribers"], 2);
    let desc = t["description"].as_str().unwrap();
    assert!(
        desc.contains("Router: core-rtr-1, 2 subscribers behind it"),
        "{desc}"
    );
    assert!(desc.contains("High latency"), "{desc}");

    // An acknowledgement adds a note, never a ticket.
    let ev = publish(
        &app,
        "noc",
        &NetworkProblemUpdated {
            event_id: "9001".into(),
            action: Some("acknowledged".into()),
            message: Some("Looking at it".into()),
            user: Some("Noc Engineer".into()),
            severity: Some("Disaster".into()),
            at: chrono::Utc::now(),
        },
    )
    .await;
    processed(&app, &ev).await;
    let path = format!("/api/support/tickets/{}", t["id"].as_str().unwrap());
    let t = app.get(&path, &token).await.body;
    assert_eq!(t["notes"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(
        t["notes"][0]["text"],
        "Noc Engineer acknowledged in Zabbix: Looking at it"
    );
    assert_eq!(t["networkSeverity"], "Disaster");

    // The recovery resolves it with a note; a second one changes nothing.
    let recovery = ZabbixEvent {
        event_id: "9005".into(),
        recovery_of: Some("9001".into()),
        ..problem.clone()
    };
    for _ in 0..2 {
        let ev = publish(&app, "noc", &NetworkRecovered(recovery.clone())).await;
        processed(&app, &ev).await;
    }
    let t = app.get(&path, &token).await.body;
    assert_eq!(t["status"], "Resolved");
    assert!(t["resolvedAt"].is_string());
    assert_eq!(t["notes"].as_array().unwrap().len(), 2, "{t}");
    assert_eq!(t["notes"][1]["recoveryEventId"], "9005");

    // A recovery that arrives before its problem: the ticket is created resolved.
    let early = ZabbixEvent {
        event_id: "9105".into(),
        recovery_of: Some("9100".into()),
        ..zabbix("9105", "unknown-host", None)
    };
    let ev = publish(&app, "noc", &NetworkRecovered(early)).await;
    processed(&app, &ev).await;
    let ev = publish(
        &app,
        "noc",
        &NetworkProblem(zabbix("9100", "unknown-host", None)),
    )
    .await;
    processed(&app, &ev).await;
    let r = app
        .get(
            "/api/support/tickets?where[ticketID][equals]=NET-9100",
            &token,
        )
        .await;
    let t = &r.body["docs"][0];
    assert_eq!(t["status"], "Resolved", "{t}");
    assert!(t["resource"].is_null());
    assert!(t["affectedSubscribers"].is_null());
    // Tickets went out as events like any other.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM support.outbox WHERE type = 'ticket.created'"
        )
        .await,
        2
    );
}
