//! DESIGN.md flow 1 across the fleet over real HTTP, Postgres and NATS: a signed
//! WhatsApp webhook from an Active partner -> wa-parser -> a Partner Referral lead
//! in CRM referred by that partner -> a Sales Agent converts it (Billing creates
//! the subscriber) -> Core counts the partner's referral -> the confirmation
//! reached the WhatsApp Cloud API stand-in.

use std::cell::RefCell;

use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_standin_whatsapp::{self as wa, Sender, WhatsAppStandIn};
use isp_testkit::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &str = "flow-app-secret";
const PHONE_ID: &str = "106540352242922";

thread_local! {
    // A StartFn cannot capture; the stand-in's port is known at run time only, and
    // services start on the test's own thread.
    static SETTINGS: RefCell<Option<svc_wa_parser::Settings>> = const { RefCell::new(None) };
}

/// The fleet, with wa-parser given this test's settings.
fn fleet() -> Vec<(ServiceInfo, StartFn)> {
    let mut f: Vec<_> = isp::fleet()
        .into_iter()
        .filter(|(info, _)| info.name != "wa-parser")
        .collect();
    f.push((svc_wa_parser::INFO, |c| {
        let s = SETTINGS.with(|s| s.borrow().clone()).unwrap_or_default();
        Box::pin(svc_wa_parser::start_with(c, s))
    }));
    f
}

#[tokio::test]
async fn a_whatsapp_lead_from_an_active_partner_is_converted_and_counted() {
    let standin = WhatsAppStandIn::start("flow-token").await.unwrap();
    SETTINGS.with(|c| {
        *c.borrow_mut() = Some(svc_wa_parser::Settings {
            app_secret: SECRET.into(),
            cloud_api_url: Some(standin.api_base.clone()),
            cloud_api_token: "flow-token".into(),
            phone_number_id: PHONE_ID.into(),
            ..Default::default()
        })
    });
    let app = TestApp::spawn(&fleet()).await;
    let admin = app.admin_token().await;
    let (sales, _) = app.staff_token("Sales Agent").await;

    let r = app
        .post("/api/core/plans", &admin, json!({"name": "Home Basic 10Mbps", "downloadSpeed": 10, "uploadSpeed": 5, "price": 2500, "billingCycle": "Monthly"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let plan = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .post("/api/core/partners", &sales, json!({"fullName": "Grace Caretaker", "phoneNumber": "0711222333", "mpesaNumber": "0711222333", "status": "Active"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let partner = r.body["doc"]["id"].as_str().unwrap().to_string();
    // CRM (referrals), wa-parser (senders) and Billing (plans) see them.
    for service in ["crm", "wa-parser"] {
        assert!(
            app.partner_has_status(service, &partner, "Active", 20)
                .await,
            "{service} never heard of the partner"
        );
    }
    app.wait_for(&format!(
        "SELECT count(*) FROM billing.plans WHERE id = '{plan}' AND plan_enabled"
    ))
    .await;
    let r = app
        .post("/api/crm/buildings", &sales, json!({"name": "Sunrise Apartments", "address": "Ngong Road", "status": "Active", "partner": partner}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let building: Uuid = r.body["doc"]["id"].as_str().unwrap().parse().unwrap();
    assert!(
        app.service_has_row("wa-parser", "buildings", building, 15)
            .await,
        "wa-parser never saw the building"
    );

    // The partner texts a lead; WhatsApp delivers the webhook twice.
    let hook = wa::text_webhook(
        PHONE_ID,
        &Sender::phone("254711222333"),
        "wamid.flow1",
        "LEAD John Kamau, 0712 345 678, Apt 3B",
    );
    let body = serde_json::to_vec(&hook).unwrap();
    for _ in 0..2 {
        let r = app
            .http
            .post(format!("{}/api/wa-parser/whatsapp/webhook", app.base))
            .header("x-hub-signature-256", wa::sign(SECRET, &body))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    let lead = app
        .lead_referred_by(&sales, &partner, 20)
        .await
        .expect("the lead reached CRM");
    assert_eq!(lead["leadSource"], "Partner Referral");
    assert_eq!(lead["subscriberName"], "John Kamau");
    assert_eq!(lead["subscriberPhone"], "+254712345678");
    assert_eq!(lead["status"], "New");
    let lead_id = lead["id"].as_str().unwrap().to_string();

    let reply = eventually(10, || async {
        let s = standin.sent_to("254711222333");
        (!s.is_empty()).then_some(s)
    })
    .await
    .expect("the confirmation reached the WhatsApp stand-in");
    assert_eq!(reply.len(), 1);
    assert!(
        reply[0].text().contains("John Kamau") && reply[0].text().contains("Apt 3B"),
        "{}",
        reply[0].text()
    );

    let before = app
        .get(&format!("/api/core/partners/{partner}"), &admin)
        .await
        .body["referralCount"]
        .as_i64()
        .unwrap();
    let r = app
        .post(
            &format!("/api/crm/leads/{lead_id}/convert"),
            &sales,
            json!({"servicePlan": plan, "billingCycle": "Monthly"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let counted = eventually(20, || async {
        let n = app
            .get(&format!("/api/core/partners/{partner}"), &admin)
            .await
            .body["referralCount"]
            .as_i64()?;
        (n == before + 1).then_some(n)
    })
    .await;
    assert_eq!(
        counted,
        Some(before + 1),
        "the partner's referralCount went up by one"
    );
    let subs = app
        .get(
            &format!("/api/billing/subscribers?where[lead][equals]={lead_id}"),
            &admin,
        )
        .await;
    assert_eq!(subs.body["totalDocs"], 1, "{:?}", subs.body);
    assert_eq!(subs.body["docs"][0]["status"], "Pending Installation");
    let log: Value = app
        .get(
            "/api/wa-parser/inboundMessages?where[providerMessageId][equals]=wamid.flow1",
            &sales,
        )
        .await
        .body;
    assert_eq!(log["totalDocs"], 1);
    assert_eq!(log["docs"][0]["outcome"], "Lead created");
    assert_eq!(log["docs"][0]["lead"], json!(lead_id));
    assert_eq!(log["docs"][0]["replyStatus"], "Sent");
}
