//! CRM over real HTTP, Postgres and NATS, with Core (tokens, partners) and a small
//! local stand-in for Billing's `POST /api/billing/subscribers` that records every
//! call and answers like Billing (the cross-service scenario with the real Billing
//! lives in the workspace's tests/flow_lead_to_subscriber.rs).

#[path = "api/access.rs"]
mod access;
#[path = "api/buildings.rs"]
mod buildings;
#[path = "api/convert.rs"]
mod convert;
#[path = "api/intake.rs"]
mod intake;
#[path = "api/leads.rs"]
mod leads;
#[path = "api/projections.rs"]
mod projections;

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
    assert!(
        app.partner_has_status("crm", pid, status, 10).await,
        "CRM never saw partner {pid} as {status}"
    );
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
