//! Leads: field checks, the status pipeline, unit status, leads from the WhatsApp parser.

use super::*;

#[tokio::test]
async fn leads_validate_referrer_phone_and_location() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let active = partner(&app, &sales, "0711000003", "Active").await;
    let prospect = partner(&app, &sales, "0711000004", "Prospect").await;
    let b = building(&app, &sales, None).await;
    let u = unit(&app, &sales, &b, "1A").await;

    let r = app
        .post("/api/crm/leads", &sales, referral(&u, &active))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let doc = &r.body["doc"];
    assert_eq!(doc["status"], "New", "a new lead starts at New");
    assert_eq!(doc["subscriberPhone"], "+254712345678");
    assert!(doc["subscriber"].is_null());
    let l = r.id();
    let ev = app.last_event("isp.crm.lead.created", &l).await;
    assert_eq!(ev["data"]["referredBy"], json!(active));
    assert_eq!(ev["data"]["subscriberPhone"], "+254712345678");

    let base = referral(&u, &active);
    let unknown = Uuid::new_v4().to_string();
    for (field, value, path) in [
        ("referredBy", Value::Null, "referredBy"),
        ("referredBy", json!(prospect), "referredBy"),
        ("referredBy", json!(unknown), "referredBy"),
        ("referredBy", json!("x"), "referredBy"),
        ("subscriberPhone", json!("12345"), "subscriberPhone"),
        ("subscriberPhone", json!("0712x45678"), "subscriberPhone"),
        ("subscriberPhone", json!(712345678), "subscriberPhone"),
        ("subscriberPhone", Value::Null, "subscriberPhone"),
        ("serviceLocation", json!(Uuid::new_v4()), "serviceLocation"),
        ("serviceLocation", Value::Null, "serviceLocation"),
        ("leadSource", json!("Billboard"), "leadSource"),
        ("leadSource", Value::Null, "leadSource"),
        ("subscriberName", json!(""), "subscriberName"),
        ("status", json!("Won"), "status"),
        ("notes", json!(42), "notes"),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        let r = app.post("/api/crm/leads", &sales, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{field}={value}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(path), "{field}={value}");
    }
    // A referrer on a lead that is not a referral is refused; a Website lead needs none.
    let mut web = base.clone();
    web["leadSource"] = json!("Website");
    let r = app.post("/api/crm/leads", &sales, web.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("referredBy"));
    web.as_object_mut().unwrap().remove("referredBy");
    let w = lead(&app, &sales, web).await;
    // Turning it into a referral needs an Active referrer.
    let r = app
        .patch(
            &format!("/api/crm/leads/{w}"),
            &sales,
            json!({"leadSource": "Partner Referral"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("referredBy"));
    // Switching a referral to Direct Call drops the referrer.
    let r = app
        .patch(
            &format!("/api/crm/leads/{l}"),
            &sales,
            json!({"leadSource": "Direct Call"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["doc"]["referredBy"].is_null());
    // The system fields are the conversion's.
    let r = app
        .patch(
            &format!("/api/crm/leads/{l}"),
            &sales,
            json!({"subscriber": Uuid::new_v4()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_path(), Some("subscriber"));

    // A partner deactivated in Core can no longer refer new leads.
    let r = app
        .patch(
            &format!("/api/core/partners/{active}"),
            &sales,
            json!({"status": "Inactive"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_partner(&app, &active, "Inactive").await;
    let r = app
        .post("/api/crm/leads", &sales, referral(&u, &active))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("referredBy"));
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("Active"));
    assert_eq!(app.get("/api/crm/leads", &sales).await.body["totalDocs"], 2);
}

#[tokio::test]
async fn lead_status_moves_forward_may_skip_and_lost_reopens_but_converted_needs_convert() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let (_, _, _, l) = pipeline(&app, &sales).await;
    let path = format!("/api/crm/leads/{l}");
    let set = |s: &'static str| {
        let app = &app;
        let sales = &sales;
        let path = &path;
        async move { app.patch(path, sales, json!({"status": s})).await }
    };
    // Skipping forward is allowed.
    assert_eq!(set("Site Survey").await.status, StatusCode::OK);
    // Back is not.
    let r = set("Contacted").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("status"));
    // Converted only through the convert endpoint.
    let r = set("Converted").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("status"));
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("/convert"));
    // Lost, then reopened.
    assert_eq!(set("Lost").await.status, StatusCode::OK);
    let r = app
        .post(&format!("{path}/convert"), &sales, convert_body())
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a Lost lead is not converted"
    );
    assert_eq!(r.error_path(), Some("status"));
    assert_eq!(set("Contacted").await.status, StatusCode::OK);
    let r = app
        .post(&format!("{path}/convert"), &sales, convert_body())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // Converted is final, and a converted lead is not deleted.
    for s in ["Lost", "New", "Site Survey"] {
        let r = set(s).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{s}");
        assert_eq!(r.error_path(), Some("status"));
    }
    let r = app
        .patch(&path, &sales, json!({"notes": "Installed on the 3rd"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "notes may still be added");
    assert_eq!(app.delete(&path, &sales).await.status, StatusCode::CONFLICT);
    assert_eq!(billing_calls(&app).await.len(), 1);
}

#[tokio::test]
async fn unit_status_follows_the_pipeline_without_overriding_staff_edits() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let b = building(&app, &sales, None).await;
    let status = |u: String| {
        let app = &app;
        let sales = &sales;
        async move {
            app.get(&format!("/api/crm/buildingUnits/{u}"), sales)
                .await
                .body["status"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let direct = |u: &str| json!({"leadSource": "Direct Call", "subscriberName": "Amina Hassan", "subscriberPhone": "0722111222", "serviceLocation": u});

    // Vacant -> Lead when a lead arrives.
    let u1 = unit(&app, &sales, &b, "1").await;
    let l1 = lead(&app, &sales, direct(&u1)).await;
    assert_eq!(status(u1.clone()).await, "Lead");
    // A deliberate edit of the unit sticks: later lead edits do not undo it.
    app.patch(
        &format!("/api/crm/buildingUnits/{u1}"),
        &sales,
        json!({"status": "Occupied"}),
    )
    .await;
    let r = app
        .patch(
            &format!("/api/crm/leads/{l1}"),
            &sales,
            json!({"status": "Contacted", "notes": "called"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(status(u1.clone()).await, "Occupied");
    // Marking the lead Lost does not pull the unit back either.
    app.patch(
        &format!("/api/crm/buildingUnits/{u1}"),
        &sales,
        json!({"status": "Lead"}),
    )
    .await;
    app.patch(
        &format!("/api/crm/leads/{l1}"),
        &sales,
        json!({"status": "Lost"}),
    )
    .await;
    assert_eq!(status(u1.clone()).await, "Lead");

    // Occupied -> Lead when a new lead arrives.
    let u2 = unit(&app, &sales, &b, "2").await;
    app.patch(
        &format!("/api/crm/buildingUnits/{u2}"),
        &sales,
        json!({"status": "Occupied"}),
    )
    .await;
    let l2 = lead(&app, &sales, direct(&u2)).await;
    assert_eq!(status(u2.clone()).await, "Lead");
    // Conversion -> Subscriber.
    let r = app
        .post(
            &format!("/api/crm/leads/{l2}/convert"),
            &sales,
            convert_body(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(status(u2.clone()).await, "Subscriber");
    // A new prospect in a subscribed unit never pulls it back from Subscriber.
    lead(&app, &sales, direct(&u2)).await;
    assert_eq!(status(u2.clone()).await, "Subscriber");
    // Moving a lead to another unit marks that unit.
    let u3 = unit(&app, &sales, &b, "3").await;
    let r = app
        .patch(
            &format!("/api/crm/leads/{l1}"),
            &sales,
            json!({"status": "New", "serviceLocation": u3}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(status(u3).await, "Lead");
}

#[tokio::test]
async fn wa_parser_creates_a_lead_once_per_idempotency_key() {
    let app = app().await;
    let admin = app.admin_token().await;
    let p = partner(&app, &admin, "0711000006", "Active").await;
    let b = building(&app, &admin, None).await;
    let u = unit(&app, &admin, &b, "7").await;
    let wa = app.service_token("wa-parser", &["crm.leads.create"]);
    let send = |key: &'static str, body: Value| {
        let app = &app;
        let wa = wa.clone();
        async move {
            let res = app
                .http
                .post(format!("{}/api/crm/leads", app.base))
                .bearer_auth(wa)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let (s1, b1) = send("wamid.1", referral(&u, &p)).await;
    assert_eq!(s1, StatusCode::CREATED, "{b1:?}");
    let (s2, b2) = send("wamid.1", referral(&u, &p)).await;
    assert_eq!(s2, StatusCode::CREATED);
    assert_eq!(b1["doc"]["id"], b2["doc"]["id"]);
    let mut other = referral(&u, &p);
    other["subscriberName"] = json!("Someone Else");
    let (s3, b3) = send("wamid.1", other).await;
    assert_eq!(s3, StatusCode::CONFLICT, "{b3:?}");
    assert_eq!(b3["errors"][0]["path"], "Idempotency-Key");
    assert_eq!(app.get("/api/crm/leads", &admin).await.body["totalDocs"], 1);
    // That scope creates leads and nothing else.
    let r = app.get("/api/crm/leads", &wa).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .post(
            "/api/crm/buildings",
            &wa,
            json!({"name": "x", "address": "y", "status": "Active"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let lead_id = b1["doc"]["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/api/crm/leads/{lead_id}/convert"),
            &wa,
            convert_body(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}
