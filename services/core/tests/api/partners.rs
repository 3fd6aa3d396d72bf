//! Partners: normalised unique phone numbers and referral counts from converted leads.

use isp_events::payloads::LeadConverted;
use isp_testkit::eventually;
use isp_testkit::fixtures::partner_body;
use reqwest::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn partners_normalize_phone_numbers_and_keep_them_unique() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let r = app
        .post("/api/core/partners", &sales, partner_body("0712 345 678"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let doc = &r.body["doc"];
    assert_eq!(doc["phoneNumber"], "+254712345678");
    assert_eq!(doc["mpesaNumber"], "+254722000111");
    assert_eq!(doc["commissionRate"], "1500.00");
    assert_eq!(doc["referralCount"], 0);
    assert_eq!(doc["perks"], false);
    for same in ["+254712345678", "254712345678", "0712-345-678"] {
        let d = app
            .post("/api/core/partners", &sales, partner_body(same))
            .await;
        assert_eq!(d.status, StatusCode::CONFLICT, "{same}");
        assert_eq!(d.error_path(), Some("phoneNumber"));
    }
    let bad = app
        .post("/api/core/partners", &sales, partner_body("12345"))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_path(), Some("phoneNumber"));
    let mut b = partner_body("0733000000");
    b["status"] = json!("Dormant");
    assert_eq!(
        app.post("/api/core/partners", &sales, b).await.error_path(),
        Some("status")
    );
    let mut b = partner_body("0733000000");
    b["buildings"] = json!([uuid::Uuid::new_v4().to_string()]);
    let r = app.post("/api/core/partners", &sales, b).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("buildings"));
    // referralCount is the system's.
    let id = doc["id"].as_str().unwrap();
    let r = app
        .patch(
            &format!("/api/core/partners/{id}"),
            &sales,
            json!({"referralCount": 10}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_path(), Some("referralCount"));
    let mut b = partner_body("0733000000");
    b["referralCount"] = json!(3);
    assert_eq!(
        app.post("/api/core/partners", &sales, b).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn lead_converted_increments_referral_count_exactly_once_per_lead() {
    let app = app().await;
    let admin = app.admin_token().await;
    let partner = app
        .post("/api/core/partners", &admin, partner_body("0711111111"))
        .await
        .id();
    let lead = uuid::Uuid::new_v4();
    let payload = LeadConverted {
        lead_id: lead,
        referred_by: Some(partner.parse().unwrap()),
        subscriber_id: uuid::Uuid::new_v4(),
        converted_at: chrono::Utc::now(),
    };
    // The same conversion published as two distinct events (as a retried CRM might).
    for _ in 0..2 {
        app.publish("crm", &payload).await;
    }
    let count = eventually(10, || async {
        let r = app
            .get(&format!("/api/core/partners/{partner}"), &admin)
            .await;
        (r.body["referralCount"] == 1).then_some(1)
    })
    .await;
    assert_eq!(count, Some(1));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        app.get(&format!("/api/core/partners/{partner}"), &admin)
            .await
            .body["referralCount"],
        1
    );
}
