//! docs/contract.md#flows, flow 2, across the whole fleet over real HTTP, Postgres and
//! NATS: a Sales Agent converts a partner's referral lead in CRM -> Billing creates
//! the subscriber (Pending Installation, account number) and the first invoice
//! (plan fee + one-off charges) -> Core counts the partner's referral exactly once,
//! however often the conversion is sent.

use isp_testkit::{eventually, Res, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

struct World {
    app: TestApp,
    admin: String,
    sales: String,
    plan: String,
    partner: String,
    unit: String,
    lead: String,
}

fn id(r: &Res) -> String {
    r.body["doc"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {:?} {:?}", r.status, r.body))
        .to_string()
}

async fn scalar_in(app: &TestApp, service: &str, sql: &str, id: &str) -> Option<bool> {
    sqlx::query_scalar(sql)
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_optional(&app.ctx(service).pool)
        .await
        .ok()
        .flatten()
}

/// A plan in Core, once Billing's projection has it with `enabled` (planEnabled and
/// activeForNewSignups both).
async fn plan(app: &TestApp, admin: &str, name: &str) -> String {
    let r = app
        .post(
            "/api/core/plans",
            admin,
            json!({"name": name, "downloadSpeed": 10, "uploadSpeed": 5, "price": 2500, "billingCycle": "Monthly"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let plan = id(&r);
    wait_plan(app, &plan, true).await;
    plan
}

async fn wait_plan(app: &TestApp, plan: &str, open: bool) {
    let seen = eventually(15, || async {
        let v = scalar_in(
            app,
            "billing",
            "SELECT plan_enabled AND active_for_new_signups FROM plans WHERE id = $1",
            plan,
        )
        .await?;
        (v == open).then_some(())
    })
    .await;
    assert!(seen.is_some(), "Billing never saw plan {plan} open={open}");
}

/// Plan, Active partner (seen by CRM), building, unit and a Partner Referral lead.
async fn world() -> World {
    let app = TestApp::spawn(&isp::fleet()).await;
    let admin = app.admin_token().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let plan = plan(&app, &admin, "Home Basic 10Mbps").await;
    let r = app
        .post(
            "/api/core/partners",
            &sales,
            json!({"fullName": "Jane Caretaker", "phoneNumber": "0711222333", "mpesaNumber": "0711222333", "status": "Active"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let partner = id(&r);
    let seen = eventually(15, || async {
        let active = scalar_in(
            &app,
            "crm",
            "SELECT status = 'Active' FROM partners WHERE id = $1",
            &partner,
        )
        .await?;
        active.then_some(())
    })
    .await;
    assert!(seen.is_some(), "CRM never saw the partner");
    let r = app
        .post(
            "/api/crm/buildings",
            &sales,
            json!({"name": "Mombasa Trade Center", "address": "Moi Avenue", "status": "Active", "partner": partner, "location": [39.6682, -4.0435]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let building = id(&r);
    let r = app
        .post(
            "/api/crm/buildingUnits",
            &sales,
            json!({"unitNumber": "Apt 3B", "building": building, "status": "Vacant"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let unit = id(&r);
    let r = app
        .post(
            "/api/crm/leads",
            &sales,
            json!({"leadSource": "Partner Referral", "referredBy": partner, "subscriberName": "John Kamau",
                   "subscriberPhone": "0712345678", "serviceLocation": unit}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let lead = id(&r);
    World {
        app,
        admin,
        sales,
        plan,
        partner,
        unit,
        lead,
    }
}

fn convert_body(plan: &str) -> Value {
    json!({"servicePlan": plan, "billingCycle": "Monthly",
           "oneOffCharges": [{"description": "Installation Fee", "quantity": 1, "price": "1500"},
                             {"description": "Router Purchase", "quantity": 1, "price": "3500.50"}]})
}

impl World {
    async fn convert(&self, body: &Value) -> Res {
        self.app
            .post(
                &format!("/api/crm/leads/{}/convert", self.lead),
                &self.sales,
                body.clone(),
            )
            .await
    }

    /// Billing's subscribers for this lead.
    async fn billing_subscribers(&self) -> Vec<Value> {
        let r = self
            .app
            .get(
                &format!("/api/billing/subscribers?where[lead][equals]={}", self.lead),
                &self.admin,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.body["docs"].as_array().unwrap().clone()
    }

    async fn referral_count(&self) -> i64 {
        self.app
            .get(&format!("/api/core/partners/{}", self.partner), &self.admin)
            .await
            .body["referralCount"]
            .as_i64()
            .unwrap()
    }

    /// One subscriber, Pending Installation, with one first invoice of plan fee +
    /// one-off charges; the lead and unit show the conversion; the referral is
    /// counted once.
    async fn assert_converted_once(&self, subscriber: &str) {
        let subs = self.billing_subscribers().await;
        assert_eq!(subs.len(), 1, "{subs:?}");
        let sub = &subs[0];
        assert_eq!(sub["id"], json!(subscriber));
        assert_eq!(sub["status"], "Pending Installation");
        assert!(!sub["accountNumber"].as_str().unwrap().is_empty());
        assert_eq!(sub["firstName"], "John");
        assert_eq!(sub["lastName"], "Kamau");
        assert_eq!(sub["mpesaNumber"], "+254712345678");
        assert_eq!(sub["servicePlan"], json!(self.plan));
        assert_eq!(sub["serviceLocation"], json!(self.unit));
        let inv = self
            .app
            .get(
                &format!("/api/billing/invoices?where[subscriber][equals]={subscriber}"),
                &self.admin,
            )
            .await;
        assert_eq!(inv.status, StatusCode::OK, "{:?}", inv.body);
        assert_eq!(inv.body["totalDocs"], 1, "{:?}", inv.body);
        let invoice = &inv.body["docs"][0];
        // 2500 plan fee + 1500 installation + 3500.50 router.
        assert_eq!(invoice["amountDue"], "7500.50");
        let items = invoice["lineItems"].as_array().unwrap();
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(items.iter().any(|i| i["description"] == "Installation Fee"));
        assert!(items.iter().any(|i| i["description"] == "Router Purchase"));

        let lead = self
            .app
            .get(&format!("/api/crm/leads/{}", self.lead), &self.sales)
            .await;
        assert_eq!(lead.body["status"], "Converted");
        assert_eq!(lead.body["subscriber"], json!(subscriber));
        let unit = self
            .app
            .get(
                &format!("/api/crm/buildingUnits/{}", self.unit),
                &self.sales,
            )
            .await;
        assert_eq!(unit.body["status"], "Subscriber");

        let counted = eventually(15, || async {
            (self.referral_count().await == 1).then_some(())
        })
        .await;
        assert!(counted.is_some(), "referralCount never reached 1");
        // And it stays there once every event has had time to arrive.
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        assert_eq!(self.referral_count().await, 1);
    }
}

#[tokio::test]
async fn converting_a_referral_lead_twice_creates_one_subscriber_one_invoice_and_one_referral() {
    let w = world().await;
    assert_eq!(w.referral_count().await, 0);
    let body = convert_body(&w.plan);
    let first = w.convert(&body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let sub = first.body["subscriber"]["id"].as_str().unwrap().to_string();
    assert_eq!(first.body["subscriber"]["status"], "Pending Installation");
    let second = w.convert(&body).await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    assert_eq!(second.body["subscriber"]["id"], json!(sub));
    assert_eq!(
        second.body["subscriber"]["accountNumber"],
        first.body["subscriber"]["accountNumber"]
    );
    w.assert_converted_once(&sub).await;
}

#[tokio::test]
async fn two_simultaneous_conversions_of_one_lead_create_one_subscriber() {
    let w = world().await;
    let body = convert_body(&w.plan);
    let (a, b) = tokio::join!(w.convert(&body), w.convert(&body));
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 201], "{:?} {:?}", a.body, b.body);
    assert_eq!(a.body["subscriber"]["id"], b.body["subscriber"]["id"]);
    let sub = a.body["subscriber"]["id"].as_str().unwrap().to_string();
    w.assert_converted_once(&sub).await;
}

#[tokio::test]
async fn converting_to_a_disabled_or_closed_plan_is_409_and_writes_nothing_anywhere() {
    let w = world().await;
    let before = w
        .app
        .get(&format!("/api/crm/leads/{}", w.lead), &w.sales)
        .await
        .body;
    let closed = plan(&w.app, &w.admin, "Legacy 5Mbps").await;
    for (plan, change) in [
        (&w.plan, json!({"planEnabled": false})),
        (&closed, json!({"activeForNewSignups": false})),
    ] {
        let r = w
            .app
            .patch(&format!("/api/core/plans/{plan}"), &w.admin, change)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        wait_plan(&w.app, plan, false).await;
        let r = w.convert(&convert_body(plan)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
        assert_eq!(r.error_path(), Some("servicePlan"));
        let msg = r.body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains("disabled") || msg.contains("closed"), "{msg}");
    }
    assert!(w.billing_subscribers().await.is_empty());
    let after = w
        .app
        .get(&format!("/api/crm/leads/{}", w.lead), &w.sales)
        .await
        .body;
    assert_eq!(before, after, "the lead is exactly as it was");
    let unit = w
        .app
        .get(&format!("/api/crm/buildingUnits/{}", w.unit), &w.sales)
        .await;
    assert_eq!(unit.body["status"], "Lead");
    let invoices = w.app.get("/api/billing/invoices", &w.admin).await;
    assert_eq!(invoices.body["totalDocs"], 0);
    // Re-enabled, the same lead converts.
    let r = w
        .app
        .patch(
            &format!("/api/core/plans/{}", w.plan),
            &w.admin,
            json!({"planEnabled": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_plan(&w.app, &w.plan, true).await;
    let r = w.convert(&convert_body(&w.plan)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let sub = r.body["subscriber"]["id"].as_str().unwrap().to_string();
    w.assert_converted_once(&sub).await;
}

#[tokio::test]
async fn crm_buildings_reach_core_and_noc_and_noc_equipment_shows_in_crm() {
    let w = world().await;
    let building = w
        .app
        .get(&format!("/api/crm/buildingUnits/{}", w.unit), &w.sales)
        .await
        .body["building"]
        .as_str()
        .unwrap()
        .to_string();
    // The building names the partner as its caretaker in CRM, so Core lists it on
    // the partner by itself.
    let listed = eventually(15, || async {
        let r = w
            .app
            .get(&format!("/api/core/partners/{}", w.partner), &w.sales)
            .await;
        (r.body["buildings"] == json!([building])).then_some(())
    })
    .await;
    assert!(
        listed.is_some(),
        "Core never listed the CRM building on its caretaker"
    );
    // Taking the caretaker off the building in CRM takes the building off the partner.
    let r = w
        .app
        .patch(
            &format!("/api/crm/buildings/{building}"),
            &w.sales,
            json!({"partner": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let unlisted = eventually(15, || async {
        let r = w
            .app
            .get(&format!("/api/core/partners/{}", w.partner), &w.sales)
            .await;
        (r.body["buildings"] == json!([])).then_some(())
    })
    .await;
    assert!(
        unlisted.is_some(),
        "Core kept the building on its former caretaker"
    );
    // Staff may still link a building by hand; Core checks it against its
    // projection of CRM's buildings.
    let linked = eventually(15, || async {
        let r = w
            .app
            .patch(
                &format!("/api/core/partners/{}", w.partner),
                &w.sales,
                json!({"buildings": [building]}),
            )
            .await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(linked.is_some(), "Core never accepted the CRM building");
    // NOC places a router in the building (once it knows the building) ...
    let router = eventually(15, || async {
        let r = w
            .app
            .post(
                "/api/noc/resources",
                &w.admin,
                json!({"resourceName": "MikroTik hAP ac2", "resourceType": "Router", "status": "Deployed", "location": building}),
            )
            .await;
        (r.status == StatusCode::CREATED).then(|| id(&r))
    })
    .await
    .expect("NOC never accepted the CRM building as a location");
    // ... and CRM shows it as the building's equipment, read-only.
    let shown = eventually(15, || async {
        let r = w
            .app
            .get(&format!("/api/crm/buildings/{building}"), &w.sales)
            .await;
        (r.body["equipment"] == json!([router])).then_some(())
    })
    .await;
    assert!(shown.is_some(), "CRM never listed the router as equipment");
    let r = w
        .app
        .delete(&format!("/api/noc/resources/{router}"), &w.admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let gone = eventually(15, || async {
        let r = w
            .app
            .get(&format!("/api/crm/buildings/{building}"), &w.sales)
            .await;
        (r.body["equipment"] == json!([])).then_some(())
    })
    .await;
    assert!(gone.is_some());
}
