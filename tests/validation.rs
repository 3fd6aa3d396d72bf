//! A 400 names every bad field of a request at once (docs/contract.md): the
//! engine collects wrong types, bad options, field rules, missing fields and
//! unknown references before any hook runs, for every collection.

use isp_testkit::{service, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn a_bad_request_names_every_bad_field_at_once() {
    let app = TestApp::spawn(&[service!(svc_core), service!(svc_crm), service!(svc_billing)]).await;
    let admin = app.admin_token().await;

    // A wrong type no longer hides the fields that are missing.
    let r = app
        .post("/api/crm/leads", &admin, json!({"subscriberName": 42}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(
        sorted(r.error_paths()),
        [
            "leadSource",
            "serviceLocation",
            "subscriberName",
            "subscriberPhone"
        ],
        "{:?}",
        r.body
    );

    // The reference check no longer ends validation: every missing field is named.
    let r = app.post("/api/billing/invoices", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(
        sorted(r.error_paths()),
        ["dueDate", "lineItems", "subscriber"],
        "{:?}",
        r.body
    );
    // An unknown subscriber is named beside a malformed due date.
    let r = app
        .post(
            "/api/billing/invoices",
            &admin,
            json!({"subscriber": Uuid::now_v7(), "dueDate": "soon", "lineItems": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(
        r.error_paths().contains(&"subscriber".to_string())
            && r.error_paths().contains(&"dueDate".to_string()),
        "{:?}",
        r.body
    );

    // A field rule (price above 0) is reported with the missing name.
    let r = app
        .post(
            "/api/core/plans",
            &admin,
            json!({"price": -5, "downloadSpeed": 10, "uploadSpeed": 5, "billingCycle": "Monthly"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let paths = r.error_paths();
    assert!(
        paths.contains(&"price".to_string()) && paths.contains(&"name".to_string()),
        "{:?}",
        r.body
    );
    // Nothing was written by any of them.
    let leads: i64 = app.scalar("SELECT count(*) FROM crm.leads").await;
    let invoices: i64 = app.scalar("SELECT count(*) FROM billing.invoices").await;
    let plans: i64 = app.scalar("SELECT count(*) FROM core.plans").await;
    assert_eq!((leads, invoices, plans), (0, 0, 0));
}
