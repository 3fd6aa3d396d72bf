//! DESIGN.md flow 1 by SMS across the fleet: Africa's Talking posts an inbound SMS
//! from an Active partner to wa-parser's callback -> a Partner Referral lead in CRM
//! -> the confirmation is requested from Notify through the outbox -> Notify sends
//! it through Africa's Talking (the stand-in in `standins/sms`) to the partner.

mod common;

use std::time::Duration;

use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_standin_sms::{Options, StandIns};
use isp_testkit::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

const SMS_TOKEN: &str = "flow-sms-path-token-7d1e";

/// The fleet with Notify sending through the stand-in and wa-parser taking SMS on
/// `SMS_TOKEN`.
fn fleet(notify: svc_notify::Settings) -> Vec<(ServiceInfo, StartFn)> {
    let mut f = common::fleet_with_notify(notify);
    f.retain(|(info, _)| info.name != "wa-parser");
    f.push((svc_wa_parser::INFO, |c| {
        Box::pin(svc_wa_parser::start_with(
            c,
            svc_wa_parser::Settings {
                sms_path_token: SMS_TOKEN.into(),
                sms_shortcode: Some("22384".into()),
                ..Default::default()
            },
        ))
    }));
    f
}

#[tokio::test]
async fn an_sms_lead_is_created_and_the_partner_is_answered_by_sms_through_notify() {
    let gw = StandIns::start(Options::default()).await.unwrap();
    let app = TestApp::spawn(&fleet(common::notify_through_africastalking(
        &gw,
        "22384",
        "flow-at-callback-token",
    )))
    .await;
    let admin = app.admin_token().await;
    let r = app
        .post("/api/core/partners", &admin, json!({"fullName": "Grace Caretaker", "phoneNumber": "0711222444", "mpesaNumber": "0711222444", "status": "Active"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let partner = r.body["doc"]["id"].as_str().unwrap().to_string();
    for service in ["crm", "wa-parser"] {
        assert!(
            app.partner_has_status(service, &partner, "Active", 20)
                .await,
            "{service} never heard of the partner"
        );
    }
    let r = app
        .post("/api/crm/buildings", &admin, json!({"name": "Baraka Court", "address": "Thika Road", "status": "Active", "partner": partner}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let building: Uuid = r.body["doc"]["id"].as_str().unwrap().parse().unwrap();
    assert!(
        app.service_has_row("wa-parser", "buildings", building, 15)
            .await,
        "wa-parser never saw the building"
    );

    // Africa's Talking's callback, form-encoded, delivered twice.
    let form: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("from", "+254711222444"),
            ("to", "22384"),
            ("text", "lead  Mary Achieng, 0722 333 444, 5B"),
            ("date", "2026-12-01 12:00:00"),
            ("id", "ATXid_flow_1"),
            ("linkId", "SampleLinkId"),
            ("networkCode", "63902"),
        ])
        .finish();
    for _ in 0..2 {
        let r = app
            .http
            .post(format!("{}/api/wa-parser/sms/{SMS_TOKEN}", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let lead = app
        .lead_referred_by(&admin, &partner, 20)
        .await
        .expect("the lead reached CRM");
    assert_eq!(lead["subscriberName"], "Mary Achieng");
    assert_eq!(lead["subscriberPhone"], "+254722333444");

    let sent = eventually(20, || async {
        let s: Vec<_> = gw
            .sms()
            .into_iter()
            .filter(|m| m.to.contains("+254711222444"))
            .collect();
        (!s.is_empty()).then_some(s)
    })
    .await
    .expect("Notify sent the reply through Africa's Talking");
    assert!(
        sent[0].message.contains("Mary Achieng") && sent[0].message.contains("5B"),
        "{}",
        sent[0].message
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.sms().len(), 1, "one reply for a message delivered twice");
}
