//! Bulk sends: filters, de-duplication, suppression, scheduling, progress, opt-out footer.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::*;

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
            status: isp_events::options::SubscriberStatus::parse(status).unwrap(),
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
