//! docs/contract.md#flows, flow 3, across the whole fleet over real HTTP, Postgres, NATS
//! and FreeRADIUS: a Sales Agent converts a lead -> Billing creates the subscriber
//! -> NOC opens the New Installation work order -> the assigned Technician
//! completes it -> NOC allocates the static IP and writes FreeRADIUS's tables ->
//! FreeRADIUS accepts the subscriber -> Billing shows the subscriber Active.

use isp_testkit::freeradius::{FreeRadiusParams, TestFreeRadius};
use isp_testkit::{eventually, Res, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

fn id(r: &Res) -> String {
    r.body["doc"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {:?} {:?}", r.status, r.body))
        .to_string()
}

async fn seen_in(app: &TestApp, service: &str, sql: &str, id: &str) {
    let pool = app.ctx(service).pool.clone();
    let ok = eventually(15, || {
        let pool = pool.clone();
        async move {
            let v: Option<bool> = sqlx::query_scalar(sql)
                .bind(Uuid::parse_str(id).unwrap())
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
            (v == Some(true)).then_some(())
        }
    })
    .await;
    assert!(ok.is_some(), "{service} never saw {id}: {sql}");
}

#[tokio::test]
async fn converted_lead_is_installed_accepted_by_freeradius_and_active_in_billing() {
    let app = TestApp::spawn(&isp::fleet()).await;
    let fr = TestFreeRadius::start(FreeRadiusParams::for_database(
        &app.db.host,
        app.db.port,
        &app.db.name,
    ))
    .await
    .expect("FreeRADIUS");
    let admin = app.admin_token().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (tech, tech_id) = app.staff_token("Technician").await;
    seen_in(
        &app,
        "noc",
        "SELECT status = 'Active' FROM staff WHERE id = $1",
        &tech_id,
    )
    .await;

    // A Static-Public plan drawing from a NOC subnet.
    let r = app
        .post(
            "/api/noc/ipSubnets",
            &ne,
            json!({"network": "100.64.10.0/29", "description": "Static customers"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let subnet = id(&r);
    // Core accepts the pool once NOC's ipSubnet.created has reached it.
    let body = json!({"name": "Business 20Mbps Static", "downloadSpeed": 20, "uploadSpeed": 10, "price": 6000,
                      "billingCycle": "Monthly", "ipAssignmentType": "Static-Public", "staticIpPool": subnet});
    let r = eventually(15, || async {
        let r = app.post("/api/core/plans", &admin, body.clone()).await;
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await
    .expect("Core never accepted the NOC subnet as a static pool");
    let plan = id(&r);
    seen_in(
        &app,
        "billing",
        "SELECT plan_enabled AND active_for_new_signups FROM plans WHERE id = $1",
        &plan,
    )
    .await;
    seen_in(
        &app,
        "noc",
        "SELECT NOT deleted FROM plans WHERE id = $1",
        &plan,
    )
    .await;

    // CRM: building, unit, lead; the Sales Agent converts it.
    let r = app
        .post(
            "/api/crm/buildings",
            &sales,
            json!({"name": "Nyali Plaza", "address": "Links Road", "status": "Active"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let building = id(&r);
    let r = app
        .post(
            "/api/crm/buildingUnits",
            &sales,
            json!({"unitNumber": "Shop 4", "building": building, "status": "Vacant"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let unit = id(&r);
    let r = app
        .post(
            "/api/crm/leads",
            &sales,
            json!({"leadSource": "Direct Call", "subscriberName": "Wanjiku Mwangi", "subscriberPhone": "0733444555", "serviceLocation": unit}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let lead = id(&r);
    let r = app
        .post(
            &format!("/api/crm/leads/{lead}/convert"),
            &sales,
            json!({"servicePlan": plan, "billingCycle": "Monthly", "addressNotes": "Second floor, ask security", "oneOffCharges": []}),
        )
        .await;
    assert!(r.status.is_success(), "{:?} {:?}", r.status, r.body);
    let sub = r.body["subscriber"]["id"].as_str().unwrap().to_string();

    // NOC opened the installation order; the NOC engineer assigns the technician.
    let order = eventually(15, || async {
        let r = app
            .get(
                &format!("/api/noc/workOrders?where[subscriber][equals]={sub}"),
                &ne,
            )
            .await;
        r.body["docs"].as_array().and_then(|d| d.first().cloned())
    })
    .await
    .expect("NOC opens a New Installation work order");
    assert_eq!(order["orderType"], "New Installation");
    let order = order["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{order}"),
            &ne,
            json!({"assignedTo": tech_id, "status": "Scheduled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // The technician sees the customer's name, phone and directions, and completes it.
    let mine = app.get("/api/noc/workOrders", &tech).await;
    assert_eq!(mine.body["totalDocs"], 1);
    assert_eq!(mine.body["docs"][0]["subscriberName"], "Wanjiku Mwangi");
    assert_eq!(
        mine.body["docs"][0]["addressNotes"],
        "Second floor, ask security"
    );
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{order}"),
            &tech,
            json!({"status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // FreeRADIUS accepts the subscriber with the plan's speeds and the static IP.
    let noc_sub = app
        .get(&format!("/api/noc/subscribers/{sub}"), &ne)
        .await
        .body;
    let username = noc_sub["radiusUsername"].as_str().unwrap().to_string();
    let password = noc_sub["radiusPassword"].as_str().unwrap().to_string();
    let reply = fr.auth(&username, &password).await.unwrap();
    assert!(reply.accepted, "{reply:?}\n{}", fr.log());
    assert_eq!(reply.attr("Mikrotik-Rate-Limit"), Some("10M/20M"));
    assert_eq!(reply.attr("Framed-IP-Address"), Some("100.64.10.1"));

    // Billing shows the subscriber Active, with the address NOC assigned.
    let active = eventually(15, || async {
        let r = app
            .get(&format!("/api/billing/subscribers/{sub}"), &admin)
            .await;
        (r.body["status"] == "Active").then_some(r.body)
    })
    .await
    .expect("Billing sets the subscriber Active");
    assert_eq!(active["assignedIp"], "100.64.10.1");
    assert_eq!(noc_sub["accountNumber"], active["accountNumber"]);
}
