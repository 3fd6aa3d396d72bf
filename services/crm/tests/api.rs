//! CRM over real HTTP, Postgres and NATS, with Core (tokens, partners) and a small
//! local stand-in for Billing's `POST /api/billing/subscribers` that records every
//! call and answers like Billing (the cross-service scenario with the real Billing
//! lives in the workspace's tests/flow_lead_to_subscriber.rs).

#[path = "api/projections.rs"]
mod projections;

use isp_events::payloads::{ResourceCreated, ResourceDeleted, ResourceSnapshot, ResourceUpdated};
use isp_testkit::{eventually, service, ServiceInfo, StartFn, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// Billing as CRM sees it: scope check, Idempotency-Key replay, 409 on a plan
/// closed to signups, and a first invoice of plan fee + one-off charges.
mod standin {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::{Json, Router};
    use isp_platform::auth::{Principal, Roles};
    use isp_platform::runtime::ServiceInfo;
    use isp_platform::{ApiError, ServiceContext};
    use rust_decimal::Decimal;
    use serde_json::{json, Value};

    pub const CLOSED_PLAN: &str = "00000000-0000-4000-8000-00000000dead";
    pub const PLAN_PRICE: &str = "2500.00";

    pub const INFO: ServiceInfo = ServiceInfo {
        // Billing's name (the audience of CRM's token), in a schema of its own.
        name: "billing",
        schema: "billing_standin",
        extra_schemas: &[],
        port: 0,
        scopes: &[],
    };

    pub async fn start(ctx: Arc<ServiceContext>) -> anyhow::Result<Router> {
        sqlx::query("CREATE TABLE calls (n serial PRIMARY KEY, key text, body jsonb NOT NULL)")
            .execute(&ctx.pool)
            .await?;
        sqlx::query("CREATE TABLE subscribers (key text PRIMARY KEY, response jsonb NOT NULL)")
            .execute(&ctx.pool)
            .await?;
        Ok(Router::new()
            .route("/api/billing/subscribers", post(create))
            .with_state(ctx))
    }

    async fn create(
        State(ctx): State<Arc<ServiceContext>>,
        p: Principal,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Result<(StatusCode, Json<Value>), ApiError> {
        p.require(Roles::NONE, "billing.subscribers.create")?;
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::field("Idempotency-Key", "required"))?
            .to_string();
        let mut tx = ctx.pool.begin().await?;
        sqlx::query("INSERT INTO calls (key, body) VALUES ($1, $2)")
            .bind(&key)
            .bind(&body)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        let stored: Option<Value> =
            sqlx::query_scalar("SELECT response FROM subscribers WHERE key = $1")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(r) = stored {
            tx.commit().await?;
            return Ok((StatusCode::CREATED, Json(r)));
        }
        if body["servicePlan"] == CLOSED_PLAN {
            tx.commit().await?;
            return Err(ApiError::conflict_field(
                "servicePlan",
                "This plan is closed to new signups.",
            ));
        }
        // Widen the window in which a second, concurrent convert could slip in.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) + 1 FROM subscribers")
            .fetch_one(&mut *tx)
            .await?;
        let mut total: Decimal = PLAN_PRICE.parse().unwrap();
        let mut items =
            vec![json!({"description": "Service plan", "quantity": 1, "price": PLAN_PRICE})];
        for c in body["oneOffCharges"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let price: Decimal = c["price"].as_str().unwrap().parse().unwrap();
            total += price * Decimal::from(c["quantity"].as_i64().unwrap());
            items.push(c);
        }
        let id = uuid::Uuid::new_v4();
        let response = json!({
            "doc": {"id": id, "accountNumber": format!("ACC{n:05}"), "status": "Pending Installation",
                    "firstName": body["firstName"], "lastName": body["lastName"],
                    "mpesaNumber": body["mpesaNumber"], "servicePlan": body["servicePlan"],
                    "billingCycle": body["billingCycle"], "accountBalance": "0.00"},
            "invoice": {"id": uuid::Uuid::new_v4(), "invoiceNumber": format!("INV-{n:06}"), "subscriber": id,
                        "amountDue": total.round_dp(2).to_string(), "status": "Unpaid", "dueDate": "2026-11-25", "lineItems": items},
            "message": "Subscriber successfully created."
        });
        sqlx::query("INSERT INTO subscribers (key, response) VALUES ($1, $2)")
            .bind(&key)
            .bind(&response)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((StatusCode::CREATED, Json(response)))
    }
}

fn services() -> Vec<(ServiceInfo, StartFn)> {
    vec![service!(svc_core), service!(svc_crm), service!(standin)]
}

async fn app() -> TestApp {
    TestApp::spawn(&services()).await
}

/// A partner created through Core, once CRM's projection holds it.
async fn partner(app: &TestApp, token: &str, phone: &str, status: &str) -> String {
    let pid = app.create_partner(token, phone, status).await;
    wait_partner(app, &pid, status).await;
    pid
}

async fn wait_partner(app: &TestApp, pid: &str, status: &str) {
    let pool = app.ctx("crm").pool.clone();
    let uuid: Uuid = pid.parse().unwrap();
    let seen = eventually(10, || {
        let pool = pool.clone();
        async move {
            let s: Option<String> = sqlx::query_scalar("SELECT status FROM partners WHERE id = $1")
                .bind(uuid)
                .fetch_optional(&pool)
                .await
                .ok()?;
            (s.as_deref() == Some(status)).then_some(())
        }
    })
    .await;
    assert!(seen.is_some(), "CRM never saw partner {pid} as {status}");
}

async fn building(app: &TestApp, token: &str, partner: Option<&str>) -> String {
    let r = app
        .post(
            "/api/crm/buildings",
            token,
            json!({"name": "Mombasa Trade Center", "address": "Moi Avenue, Mombasa", "status": "Active", "partner": partner, "location": [39.6682, -4.0435]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.id()
}

async fn unit(app: &TestApp, token: &str, building: &str, number: &str) -> String {
    let r = app
        .post(
            "/api/crm/buildingUnits",
            token,
            json!({"unitNumber": number, "building": building, "status": "Vacant"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.id()
}

fn referral(unit: &str, partner: &str) -> Value {
    json!({"leadSource": "Partner Referral", "referredBy": partner, "subscriberName": "John Kamau Mwangi",
           "subscriberPhone": "0712 345 678", "serviceLocation": unit})
}

async fn lead(app: &TestApp, token: &str, body: Value) -> String {
    let r = app.post("/api/crm/leads", token, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.id()
}

/// Everything a referral conversion needs: (partner, building, unit, lead).
async fn pipeline(app: &TestApp, token: &str) -> (String, String, String, String) {
    let p = partner(app, token, "0711000001", "Active").await;
    let b = building(app, token, Some(&p)).await;
    let u = unit(app, token, &b, "Apt 3B").await;
    let l = lead(app, token, referral(&u, &p)).await;
    (p, b, u, l)
}

fn convert_body() -> Value {
    json!({"servicePlan": Uuid::new_v4(), "billingCycle": "Monthly",
           "oneOffCharges": [{"description": "Installation Fee", "quantity": 1, "price": "1500"},
                             {"description": "Router Purchase", "quantity": 2, "price": 1999.99}]})
}

async fn billing_calls(app: &TestApp) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT key, body FROM calls ORDER BY n")
        .fetch_all(&app.ctx("billing").pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn buildings_validate_every_field_check_the_partner_and_publish_events() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let p = partner(&app, &sales, "0711000002", "Prospect").await;
    let b = building(&app, &sales, Some(&p)).await;
    let got = app.get(&format!("/api/crm/buildings/{b}"), &sales).await;
    assert_eq!(got.body["location"], json!([39.6682, -4.0435]));
    assert_eq!(got.body["equipment"], json!([]));
    assert_eq!(got.body["partner"], json!(p));
    let ev = app.last_event("isp.crm.building.created", &b).await;
    assert_eq!(ev["data"]["partner"], json!(p));
    assert_eq!(ev["data"]["status"], "Active");

    let good = json!({"name": "Nyali Heights", "address": "Links Rd", "status": "Prospecting"});
    for (field, value) in [
        ("name", Value::Null),
        ("name", json!(5)),
        ("address", json!("")),
        // The 500-character bound is on what is sent (the documents' maxLength),
        // spaces that trimming would drop included.
        (
            "address",
            json!(format!("Links Rd{}", "\u{a0}".repeat(493))),
        ),
        ("status", json!("Signed")),
        ("status", Value::Null),
        ("partner", json!(Uuid::new_v4())),
        ("partner", json!("not-an-id")),
        ("location", json!([200, 0])),
        ("location", json!([39.6, -91])),
        ("location", json!([39.6])),
        ("location", json!("39.6,-4.0")),
        ("location", json!(["39.6", "-4.0"])),
    ] {
        let mut body = good.clone();
        body[field] = value.clone();
        let r = app.post("/api/crm/buildings", &sales, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{field}={value}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(field), "{field}={value}");
    }
    let missing = app
        .post("/api/crm/buildings", &sales, json!({"status": "Active"}))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let mut paths = missing.error_paths();
    paths.sort();
    assert_eq!(paths, ["address", "name"]);
    // equipment is NOC's view: never writable.
    let mut body = good.clone();
    body["equipment"] = json!([Uuid::new_v4()]);
    let r = app.post("/api/crm/buildings", &sales, body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_path(), Some("equipment"));
    let r = app
        .patch(
            &format!("/api/crm/buildings/{b}"),
            &sales,
            json!({"equipment": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/crm/buildings", &sales).await.body["totalDocs"],
        1,
        "bad input must not leave records behind"
    );

    let r = app
        .patch(
            &format!("/api/crm/buildings/{b}"),
            &sales,
            json!({"status": "Negotiating", "partner": null, "location": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["doc"]["partner"].is_null());
    let ev = app.last_event("isp.crm.building.updated", &b).await;
    assert_eq!(ev["data"]["status"], "Negotiating");
    // A building with units cannot be deleted; an empty one can.
    unit(&app, &sales, &b, "A1").await;
    let r = app.delete(&format!("/api/crm/buildings/{b}"), &sales).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let other = app.post("/api/crm/buildings", &sales, good).await;
    let other = other.id();
    let r = app
        .delete(&format!("/api/crm/buildings/{other}"), &sales)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.last_event("isp.crm.building.deleted", &other).await;
}

#[tokio::test]
async fn building_units_keep_unit_numbers_unique_within_a_building() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let b1 = building(&app, &sales, None).await;
    let b2 = building(&app, &sales, None).await;
    let u = app
        .post(
            "/api/crm/buildingUnits",
            &sales,
            json!({"unitNumber": "Apt 3B", "building": b1, "status": "Occupied", "currentProvider": "Safaricom Home Fibre",
                   "competitorPaymentDate": "2026-12-05", "currentIssues": "Drops every evening"}),
        )
        .await;
    assert_eq!(u.status, StatusCode::CREATED, "{:?}", u.body);
    assert_eq!(u.body["doc"]["competitorPaymentDate"], "2026-12-05");
    assert_eq!(u.body["doc"]["currentProvider"], "Safaricom Home Fibre");
    for number in ["Apt 3B", "apt 3b", " APT 3B "] {
        let d = app
            .post(
                "/api/crm/buildingUnits",
                &sales,
                json!({"unitNumber": number, "building": b1, "status": "Vacant"}),
            )
            .await;
        assert_eq!(d.status, StatusCode::CONFLICT, "{number}: {:?}", d.body);
        assert_eq!(d.error_path(), Some("unitNumber"));
    }
    // The same number in another building is another door.
    unit(&app, &sales, &b2, "Apt 3B").await;
    // Renaming onto an existing number is refused too.
    let other = unit(&app, &sales, &b1, "Apt 4C").await;
    let r = app
        .patch(
            &format!("/api/crm/buildingUnits/{other}"),
            &sales,
            json!({"unitNumber": "APT 3B"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("unitNumber"));

    let good = json!({"unitNumber": "G1", "building": b1, "status": "Vacant"});
    for (field, value) in [
        ("unitNumber", Value::Null),
        ("unitNumber", json!(12)),
        ("building", Value::Null),
        ("building", json!(Uuid::new_v4())),
        ("building", json!("nope")),
        ("status", json!("Empty")),
        ("status", Value::Null),
        ("competitorPaymentDate", json!("2026-02-30")),
        ("competitorPaymentDate", json!(20261205)),
        ("currentIssues", json!(["a"])),
    ] {
        let mut body = good.clone();
        body[field] = value.clone();
        let r = app.post("/api/crm/buildingUnits", &sales, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{field}={value}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(field), "{field}={value}");
    }
    assert_eq!(
        app.get("/api/crm/buildingUnits", &sales).await.body["totalDocs"],
        3
    );
    let r = app
        .get(
            &format!("/api/crm/buildingUnits?where[building][equals]={b1}&sort=unitNumber"),
            &sales,
        )
        .await;
    assert_eq!(r.body["totalDocs"], 2);
    assert_eq!(r.body["docs"][0]["unitNumber"], "Apt 3B");
}

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

#[tokio::test]
async fn only_admin_and_sales_agents_work_in_crm() {
    let app = app().await;
    let admin = app.admin_token().await;
    let p = partner(&app, &admin, "0711000005", "Active").await;
    let b = building(&app, &admin, Some(&p)).await;
    let u = unit(&app, &admin, &b, "R0").await;
    let roles = [
        "Admin",
        "Sales Agent",
        "Billing Manager",
        "Network Engineer",
        "Technician",
        "Support Agent",
    ];
    for (i, role) in roles.iter().enumerate() {
        let t = if *role == "Admin" {
            admin.clone()
        } else {
            app.staff_token(role).await.0
        };
        let allowed = matches!(*role, "Admin" | "Sales Agent");
        let expect = |ok: StatusCode| if allowed { ok } else { StatusCode::FORBIDDEN };
        for coll in ["buildings", "buildingUnits", "leads"] {
            assert_eq!(
                app.get(&format!("/api/crm/{coll}"), &t).await.status,
                expect(StatusCode::OK),
                "{role} list {coll}"
            );
        }
        assert_eq!(
            app.get(&format!("/api/crm/buildings/{b}"), &t).await.status,
            expect(StatusCode::OK),
            "{role} get building"
        );
        let nb = app
            .post(
                "/api/crm/buildings",
                &t,
                json!({"name": format!("B{i}"), "address": "x", "status": "Prospecting"}),
            )
            .await;
        assert_eq!(
            nb.status,
            expect(StatusCode::CREATED),
            "{role} create building"
        );
        let nu = app
            .post(
                "/api/crm/buildingUnits",
                &t,
                json!({"unitNumber": format!("U{i}"), "building": b, "status": "Vacant"}),
            )
            .await;
        assert_eq!(nu.status, expect(StatusCode::CREATED), "{role} create unit");
        let nl = app.post("/api/crm/leads", &t, referral(&u, &p)).await;
        assert_eq!(nl.status, expect(StatusCode::CREATED), "{role} create lead");
        assert_eq!(
            app.patch(
                &format!("/api/crm/buildings/{b}"),
                &t,
                json!({"address": format!("Moi Ave {i}")})
            )
            .await
            .status,
            expect(StatusCode::OK),
            "{role} update building"
        );
        assert_eq!(
            app.patch(
                &format!("/api/crm/buildingUnits/{u}"),
                &t,
                json!({"currentIssues": "slow"})
            )
            .await
            .status,
            expect(StatusCode::OK),
            "{role} update unit"
        );
        if allowed {
            let (nb, nu, nl) = (nb.id(), nu.id(), nl.id());
            assert_eq!(
                app.patch(
                    &format!("/api/crm/leads/{nl}"),
                    &t,
                    json!({"status": "Contacted"})
                )
                .await
                .status,
                StatusCode::OK
            );
            let c = app
                .post(&format!("/api/crm/leads/{nl}/convert"), &t, convert_body())
                .await;
            assert_eq!(
                c.status,
                StatusCode::CREATED,
                "{role} convert: {:?}",
                c.body
            );
            let other = lead(&app, &t, referral(&u, &p)).await;
            assert_eq!(
                app.delete(&format!("/api/crm/leads/{other}"), &t)
                    .await
                    .status,
                StatusCode::OK,
                "{role} delete lead"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/buildingUnits/{nu}"), &t)
                    .await
                    .status,
                StatusCode::OK,
                "{role} delete unit"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/buildings/{nb}"), &t)
                    .await
                    .status,
                StatusCode::OK,
                "{role} delete building"
            );
        } else {
            let some_lead = app.get("/api/crm/leads?limit=1", &admin).await.body["docs"][0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(
                app.patch(
                    &format!("/api/crm/leads/{some_lead}"),
                    &t,
                    json!({"notes": "x"})
                )
                .await
                .status,
                StatusCode::FORBIDDEN,
                "{role} update lead"
            );
            assert_eq!(
                app.post(
                    &format!("/api/crm/leads/{some_lead}/convert"),
                    &t,
                    convert_body()
                )
                .await
                .status,
                StatusCode::FORBIDDEN,
                "{role} convert"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/leads/{some_lead}"), &t)
                    .await
                    .status,
                StatusCode::FORBIDDEN,
                "{role} delete lead"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/buildingUnits/{u}"), &t)
                    .await
                    .status,
                StatusCode::FORBIDDEN,
                "{role} delete unit"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/buildings/{b}"), &t)
                    .await
                    .status,
                StatusCode::FORBIDDEN,
                "{role} delete building"
            );
        }
    }
    // No token at all.
    let r = app
        .request(reqwest::Method::GET, "/api/crm/leads", None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
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

#[tokio::test]
async fn noc_resource_events_fill_building_equipment() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let b1 = building(&app, &sales, None).await;
    let b2 = building(&app, &sales, None).await;
    let equipment = |b: String| {
        let app = &app;
        let sales = &sales;
        async move {
            app.get(&format!("/api/crm/buildings/{b}"), sales)
                .await
                .body["equipment"]
                .clone()
        }
    };
    let t0 = chrono::Utc::now();
    let router = ResourceSnapshot {
        id: Uuid::now_v7(),
        resource_name: "MikroTik hAP".into(),
        resource_type: isp_events::options::ResourceType::Router,
        status: isp_events::options::ResourceStatus::Deployed,
        location: Some(b1.parse().unwrap()),
        management_ip: None,
        updated_at: t0,
    };
    let antenna = ResourceSnapshot {
        id: Uuid::now_v7(),
        resource_name: "Antenna".into(),
        resource_type: isp_events::options::ResourceType::Antenna,
        location: Some(b1.parse().unwrap()),
        ..router.clone()
    };
    app.publish("noc", &ResourceCreated(router.clone())).await;
    app.publish("noc", &ResourceCreated(antenna.clone())).await;
    let both = json!([antenna.id, router.id]);
    let got = eventually(10, || async {
        (equipment(b1.clone()).await == both).then_some(())
    })
    .await;
    assert!(
        got.is_some(),
        "equipment: {:?}",
        equipment(b1.clone()).await
    );
    // The router moves to another building.
    let moved = ResourceSnapshot {
        location: Some(b2.parse().unwrap()),
        updated_at: t0 + chrono::Duration::seconds(1),
        ..router.clone()
    };
    app.publish("noc", &ResourceUpdated(moved.clone())).await;
    let got = eventually(10, || async {
        (equipment(b2.clone()).await == json!([router.id])).then_some(())
    })
    .await;
    assert!(got.is_some());
    assert_eq!(equipment(b1.clone()).await, json!([antenna.id]));
    // A stale snapshot (older updatedAt) does not move it back.
    app.publish("noc", &ResourceUpdated(router.clone())).await;
    app.publish(
        "noc",
        &ResourceDeleted(ResourceSnapshot {
            updated_at: t0 + chrono::Duration::seconds(2),
            ..antenna.clone()
        }),
    )
    .await;
    let got = eventually(10, || async {
        (equipment(b1.clone()).await == json!([])).then_some(())
    })
    .await;
    assert!(got.is_some());
    assert_eq!(equipment(b2.clone()).await, json!([router.id]));
}

#[tokio::test]
async fn openapi_documents_the_collections_and_convert() {
    let app = app().await;
    let spec = app
        .request(reqwest::Method::GET, "/api/crm/openapi.json", None, None)
        .await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["paths"]["/api/crm/leads/{id}/convert"]["post"].is_object());
    assert!(spec.body["paths"]["/api/crm/buildingUnits"]["post"].is_object());
    assert!(spec.body["components"]["schemas"]["Lead"]["properties"]["referredBy"].is_object());
}
