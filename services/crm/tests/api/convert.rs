//! Converting a lead: one subscriber in Billing, LeadConverted, Billing refusing or down.

use super::*;

#[tokio::test]
async fn converting_a_lead_calls_billing_once_and_publishes_lead_converted() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let (p, b, u, l) = pipeline(&app, &sales).await;
    let mut body = convert_body();
    body["email"] = json!("John@Example.com");
    body["trialEndDate"] = json!("2026-12-31");
    let r = app
        .post(&format!("/api/crm/leads/{l}/convert"), &sales, body.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let sub = r.body["subscriber"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["subscriber"]["accountNumber"], "ACC00001");
    assert_eq!(r.body["subscriber"]["status"], "Pending Installation");
    assert!(
        r.body["subscriber"].get("accountBalance").is_none(),
        "no finance data for Sales"
    );
    assert!(
        r.body.get("invoice").is_none(),
        "no invoice for Sales Agents"
    );
    assert_eq!(r.body["doc"]["status"], "Converted");
    assert_eq!(r.body["doc"]["subscriber"], json!(sub));
    assert!(r.body["doc"]["convertedAt"].is_string());

    let calls = billing_calls(&app).await;
    assert_eq!(calls.len(), 1);
    let (key, sent) = &calls[0];
    assert_eq!(key, &format!("lead-convert-{l}"));
    assert_eq!(sent["firstName"], "John");
    assert_eq!(sent["lastName"], "Kamau Mwangi");
    assert_eq!(
        sent["mpesaNumber"], "+254712345678",
        "defaults to the lead's phone"
    );
    assert_eq!(sent["email"], "john@example.com");
    assert_eq!(sent["trialEndDate"], "2026-12-31");
    assert_eq!(sent["servicePlan"], body["servicePlan"]);
    assert_eq!(sent["billingCycle"], "Monthly");
    assert_eq!(sent["serviceLocation"], json!(u));
    assert_eq!(sent["building"], json!(b));
    assert_eq!(sent["lead"], json!(l));
    assert_eq!(
        sent["addressNotes"],
        "Apt 3B, Mombasa Trade Center, Moi Avenue, Mombasa"
    );
    assert_eq!(
        sent["oneOffCharges"],
        json!([{"description": "Installation Fee", "quantity": 1, "price": "1500.00"},
               {"description": "Router Purchase", "quantity": 2, "price": "1999.99"}])
    );

    let ev = app.last_event("isp.crm.lead.converted", &l).await;
    assert_eq!(ev["data"]["referredBy"], json!(p));
    assert_eq!(ev["data"]["subscriberId"], json!(sub));
    // Core counted the referral once.
    let counted = eventually(10, || async {
        let r = app.get(&format!("/api/core/partners/{p}"), &sales).await;
        (r.body["referralCount"] == 1).then_some(())
    })
    .await;
    assert!(counted.is_some());

    // Converting again answers the same subscriber without calling Billing.
    let again = app
        .post(&format!("/api/crm/leads/{l}/convert"), &sales, body)
        .await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body["subscriber"]["id"], json!(sub));
    assert_eq!(billing_calls(&app).await.len(), 1);
    assert_eq!(app.outbox_count("crm", "lead.converted").await, 1);
    // An Admin also sees the first invoice.
    let admin = app.admin_token().await;
    let r = app
        .post(
            &format!("/api/crm/leads/{l}/convert"),
            &admin,
            convert_body(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["invoice"]["amountDue"], "7999.98");
    assert_eq!(r.body["invoice"]["lineItems"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn two_simultaneous_converts_create_one_subscriber() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let (_, _, _, l) = pipeline(&app, &sales).await;
    let path = format!("/api/crm/leads/{l}/convert");
    let body = convert_body();
    let (a, b) = tokio::join!(
        app.post(&path, &sales, body.clone()),
        app.post(&path, &sales, body.clone())
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 201], "{:?} {:?}", a.body, b.body);
    assert_eq!(a.body["subscriber"]["id"], b.body["subscriber"]["id"]);
    // Both may have asked Billing (no lock is held across the call), always with
    // the lead's one key, so Billing created one subscriber.
    let calls = billing_calls(&app).await;
    assert!(!calls.is_empty() && calls.iter().all(|(k, _)| *k == format!("lead-convert-{l}")));
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM subscribers")
        .fetch_one(&app.ctx("billing").pool)
        .await
        .unwrap();
    assert_eq!(created, 1);
    assert_eq!(app.outbox_count("crm", "lead.converted").await, 1);
}

#[tokio::test]
async fn converting_with_a_closed_plan_is_409_and_changes_nothing() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let (_, _, u, l) = pipeline(&app, &sales).await;
    let before = app.get(&format!("/api/crm/leads/{l}"), &sales).await.body;
    let mut body = convert_body();
    body["servicePlan"] = json!(standin::CLOSED_PLAN);
    let r = app
        .post(&format!("/api/crm/leads/{l}/convert"), &sales, body)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("servicePlan"));
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("closed"));
    let after = app.get(&format!("/api/crm/leads/{l}"), &sales).await.body;
    assert_eq!(before, after, "the lead is exactly as it was");
    assert_eq!(
        app.get(&format!("/api/crm/buildingUnits/{u}"), &sales)
            .await
            .body["status"],
        "Lead"
    );
    assert_eq!(app.outbox_count("crm", "lead.converted").await, 0);
    // With an open plan the same lead converts.
    let r = app
        .post(
            &format!("/api/crm/leads/{l}/convert"),
            &sales,
            convert_body(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn billing_unreachable_is_503_and_the_lead_is_unchanged() {
    // No Billing in this fleet: its route answers 404.
    let app = TestApp::spawn(&services()[..2]).await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let b = building(&app, &sales, None).await;
    let u = unit(&app, &sales, &b, "5").await;
    let l = lead(&app, &sales, json!({"leadSource": "Direct Call", "subscriberName": "Amina Hassan", "subscriberPhone": "0722111222", "serviceLocation": u})).await;
    let before = app.get(&format!("/api/crm/leads/{l}"), &sales).await.body;
    let r = app
        .post(
            &format!("/api/crm/leads/{l}/convert"),
            &sales,
            convert_body(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("Billing"));
    assert_eq!(
        app.get(&format!("/api/crm/leads/{l}"), &sales).await.body,
        before
    );
    assert_eq!(app.outbox_count("crm", "lead.converted").await, 0);
}

#[tokio::test]
async fn convert_input_is_validated_before_billing_is_called() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let (_, b, _, l) = pipeline(&app, &sales).await;
    let path = format!("/api/crm/leads/{l}/convert");
    for (field, value, expect) in [
        ("servicePlan", Value::Null, "servicePlan"),
        ("servicePlan", json!("plan-1"), "servicePlan"),
        ("billingCycle", json!("Weekly"), "billingCycle"),
        ("billingCycle", Value::Null, "billingCycle"),
        ("mpesaNumber", json!("0712"), "mpesaNumber"),
        ("email", json!("john@"), "email"),
        ("trialEndDate", json!("tomorrow"), "trialEndDate"),
        ("oneOffCharges", json!("Installation"), "oneOffCharges"),
        (
            "oneOffCharges",
            json!([{"description": "Router", "quantity": 1}]),
            "oneOffCharges.0.price",
        ),
        (
            "oneOffCharges",
            json!([{"description": "Router", "quantity": 0, "price": 10}]),
            "oneOffCharges.0.quantity",
        ),
        (
            "oneOffCharges",
            json!([{"description": "Router", "quantity": 1, "price": -10}]),
            "oneOffCharges.0.price",
        ),
        (
            "oneOffCharges",
            json!([{"description": "Router", "quantity": 1, "price": "1.234"}]),
            "oneOffCharges.0.price",
        ),
        (
            "oneOffCharges",
            json!([{"quantity": 1, "price": 10}]),
            "oneOffCharges.0.description",
        ),
        // Billing's bound, which the document states: 200 characters.
        (
            "oneOffCharges",
            json!([{"description": "x".repeat(201), "quantity": 1, "price": 10}]),
            "oneOffCharges.0.description",
        ),
        ("discount", json!(100), "discount"),
    ] {
        let mut body = convert_body();
        body[field] = value.clone();
        let r = app.post(&path, &sales, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{field}={value}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(expect), "{field}={value}");
    }
    let r = app
        .post(
            &format!("/api/crm/leads/{}/convert", Uuid::new_v4()),
            &sales,
            convert_body(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .post("/api/crm/leads/nope/convert", &sales, convert_body())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A one-word name needs lastName.
    let u = unit(&app, &sales, &b, "9Z").await;
    let single = lead(&app, &sales, json!({"leadSource": "Website", "subscriberName": "Wanjiru", "subscriberPhone": "0733000111", "serviceLocation": u})).await;
    let r = app
        .post(
            &format!("/api/crm/leads/{single}/convert"),
            &sales,
            convert_body(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("lastName"));
    assert!(
        billing_calls(&app).await.is_empty(),
        "Billing was never called"
    );
    let mut body = convert_body();
    body["lastName"] = json!("Njeri");
    body["mpesaNumber"] = json!("0799 888 777");
    let r = app
        .post(&format!("/api/crm/leads/{single}/convert"), &sales, body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let calls = billing_calls(&app).await;
    assert_eq!(calls[0].1["firstName"], "Wanjiru");
    assert_eq!(calls[0].1["lastName"], "Njeri");
    assert_eq!(calls[0].1["mpesaNumber"], "+254799888777");
    assert_eq!(calls[0].1["contactPhone"], "+254733000111");
}
