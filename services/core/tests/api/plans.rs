//! Plans: the spec's rules and their changes published as CloudEvents.

use isp_testkit::eventually;
use isp_testkit::fixtures::{plan_body, subnet_snapshot};
use reqwest::StatusCode;
use serde_json::json;

use super::*;

/// Publishes NOC's `ipSubnet.created` for a new subnet, as NOC would; returns its id.
async fn announce_subnet(app: &TestApp, network: &str) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let subnet = subnet_snapshot(id, network, chrono::Utc::now());
    app.publish("noc", &isp_events::payloads::IpSubnetCreated(subnet))
        .await;
    id
}

#[tokio::test]
async fn plans_follow_the_spec_rules() {
    let app = app().await;
    let admin = app.admin_token().await;
    let r = app.post("/api/core/plans", &admin, plan_body()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let doc = &r.body["doc"];
    assert_eq!(doc["price"], "2500.00");
    assert_eq!(doc["planEnabled"], true);
    assert_eq!(doc["activeForNewSignups"], true);
    assert_eq!(doc["ipAssignmentType"], "Dynamic");
    assert!(doc["staticIpPool"].is_null());

    let mut s = plan_body();
    s["name"] = json!("Static 20");
    s["ipAssignmentType"] = json!("Static-Public");
    let r = app.post("/api/core/plans", &admin, s.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("staticIpPool"));
    // The pool must be a subnet NOC has announced.
    s["staticIpPool"] = json!(uuid::Uuid::new_v4().to_string());
    let r = app.post("/api/core/plans", &admin, s.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("staticIpPool"));
    let subnet = announce_subnet(&app, "100.64.20.0/29").await;
    s["staticIpPool"] = json!(subnet.to_string());
    let r = eventually(10, || async {
        let r = app.post("/api/core/plans", &admin, s.clone()).await;
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await
    .expect("Core never learnt NOC's subnet");
    // Switching it to Dynamic drops the pool.
    let id = r.body["doc"]["id"].as_str().unwrap();
    let r = app
        .patch(
            &format!("/api/core/plans/{id}"),
            &admin,
            json!({"ipAssignmentType": "Dynamic"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["doc"]["staticIpPool"].is_null());

    for (field, value) in [
        ("price", json!(0)),
        ("price", json!(-5)),
        ("price", json!("12.345")),
        ("price", json!("abc")),
        ("downloadSpeed", json!(0)),
        ("uploadSpeed", json!("fast")),
        ("billingCycle", json!("Weekly")),
        ("ipAssignmentType", json!("Static")),
        ("staticIpPool", json!("not-a-uuid")),
        ("planEnabled", json!("yes")),
    ] {
        let mut b = plan_body();
        b["name"] = json!(format!("Plan {field} {value}"));
        b[field] = value.clone();
        let r = app.post("/api/core/plans", &admin, b).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{field}={value}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(field), "{field}={value}");
    }
    let dup = app.post("/api/core/plans", &admin, plan_body()).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.error_path(), Some("name"));
    let count = app.get("/api/core/plans", &admin).await.body["totalDocs"]
        .as_i64()
        .unwrap();
    assert_eq!(count, 2, "bad input must not leave records behind");
}

#[tokio::test]
async fn plan_changes_are_published_as_cloudevents() {
    let app = app().await;
    let admin = app.admin_token().await;
    let id = app.post("/api/core/plans", &admin, plan_body()).await.id();
    let found = app.last_event("isp.core.plan.created", &id).await;
    assert_eq!(found["specversion"], "1.0");
    assert_eq!(found["type"], "plan.created");
    assert_eq!(found["source"], "/isp/core");
    assert_eq!(found["data"]["price"], "2500.00");
}
