//! `POST /api/crm/intake/leads`: wa-parser's one operation in CRM (Core and CRM only).

use isp_testkit::Res;

use super::*;

/// Core and CRM only: intake never reaches Billing.
fn services() -> Vec<(ServiceInfo, StartFn)> {
    vec![service!(svc_core), service!(svc_crm)]
}

async fn building(app: &TestApp, token: &str, partner: &str) -> String {
    let r = app
        .post(
            "/api/crm/buildings",
            token,
            json!({"name": "Sunrise Apartments", "address": "Ngong Road", "status": "Active", "partner": partner}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.id()
}

async fn intake(app: &TestApp, token: &str, key: Option<&str>, body: &Value) -> Res {
    let mut req = app
        .http
        .post(format!("{}{}", app.base, svc_crm::intake::INTAKE_PATH))
        .header("authorization", format!("Bearer {token}"))
        .json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    Res {
        status,
        body: res.json().await.unwrap_or(Value::Null),
    }
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.ctx("crm").pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn intake_creates_the_unit_when_new_and_one_lead_per_key() {
    let app = TestApp::spawn(&services()).await;
    let admin = app.admin_token().await;
    let p = partner(&app, &admin, "0711000101", "Active").await;
    let b = building(&app, &admin, &p).await;
    let wa = app.service_token("wa-parser", &[svc_crm::intake::INTAKE_SCOPE]);
    let body = json!({"partner": p, "building": b, "unitNumber": "B4", "subscriberName": "Jane Wanjiku",
                      "subscriberPhone": "0712 345 678", "notes": "LEAD Jane Wanjiku, 0712345678, B4"});

    let r = intake(&app, &wa, Some("wa-parser-lead-1"), &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["unit"]["created"], true);
    assert_eq!(r.body["unit"]["unitNumber"], "B4");
    let lead = &r.body["doc"];
    assert_eq!(lead["leadSource"], "Partner Referral");
    assert_eq!(lead["referredBy"], json!(p));
    assert_eq!(lead["subscriberPhone"], "+254712345678");
    assert_eq!(lead["serviceLocation"], r.body["unit"]["id"]);
    assert_eq!(lead["notes"], "LEAD Jane Wanjiku, 0712345678, B4");
    assert_eq!(lead["status"], "New");

    // A retry answers the same and creates nothing.
    let again = intake(&app, &wa, Some("wa-parser-lead-1"), &body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body["doc"]["id"], lead["id"]);
    assert_eq!(count(&app, "SELECT count(*) FROM leads").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM building_units").await, 1);
    // The same key with another body is refused.
    let mut other = body.clone();
    other["subscriberName"] = json!("June");
    let r = intake(&app, &wa, Some("wa-parser-lead-1"), &other).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);

    // A second lead for "b4" (another case) lands on the same unit, now Lead.
    let r = intake(
        &app,
        &wa,
        Some("wa-parser-lead-2"),
        &json!({"partner": p, "building": b, "unitNumber": "b4",
        "subscriberName": "Peter Otieno", "subscriberPhone": "+254722000111"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["unit"]["created"], false);
    assert_eq!(r.body["doc"]["serviceLocation"], lead["serviceLocation"]);
    assert_eq!(count(&app, "SELECT count(*) FROM building_units").await, 1);
    let status: String = sqlx::query_scalar("SELECT status FROM building_units")
        .fetch_one(&app.ctx("crm").pool)
        .await
        .unwrap();
    assert_eq!(status, "Lead");
    // lead.created went through the outbox.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox WHERE type = 'lead.created'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn intake_is_for_the_scoped_service_token_only_and_checks_everything() {
    let app = TestApp::spawn(&services()).await;
    let admin = app.admin_token().await;
    let p = partner(&app, &admin, "0711000102", "Active").await;
    let prospect = partner(&app, &admin, "0711000103", "Prospect").await;
    let b = building(&app, &admin, &p).await;
    let body = json!({"partner": p, "building": b, "unitNumber": "1", "subscriberName": "Jane",
                      "subscriberPhone": "0712345678"});

    // Staff (even Admin) and services with other scopes may not.
    let r = intake(&app, &admin, Some("k1"), &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let other = app.service_token("wa-parser", &["crm.leads.create"]);
    assert_eq!(
        intake(&app, &other, Some("k1"), &body).await.status,
        StatusCode::FORBIDDEN
    );
    let wa = app.service_token("wa-parser", &[svc_crm::intake::INTAKE_SCOPE]);

    // The key is required.
    let r = intake(&app, &wa, None, &body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("Idempotency-Key"));

    // Every bad field at once.
    let r = intake(
        &app,
        &wa,
        Some("k2"),
        &json!({"partner": "x", "unitNumber": "  ", "subscriberPhone": "07",
        "extra": 1}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(
        paths,
        [
            "building",
            "extra",
            "partner",
            "subscriberName",
            "subscriberPhone",
            "unitNumber"
        ]
    );

    // Another partner's building, an unknown building, a partner not Active: 400,
    // and no unit is left behind.
    let mut wrong = body.clone();
    wrong["partner"] = json!(prospect);
    let r = intake(&app, &wa, Some("k3"), &wrong).await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("building")),
        "{:?}",
        r.body
    );
    let mut unknown = body.clone();
    unknown["building"] = json!(Uuid::new_v4());
    let r = intake(&app, &wa, Some("k4"), &unknown).await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("building"))
    );
    let pb = building(&app, &admin, &prospect).await;
    let mut inactive = wrong.clone();
    inactive["building"] = json!(pb);
    let r = intake(&app, &wa, Some("k5"), &inactive).await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("referredBy")),
        "{:?}",
        r.body
    );
    assert_eq!(count(&app, "SELECT count(*) FROM building_units").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM leads").await, 0);
}
