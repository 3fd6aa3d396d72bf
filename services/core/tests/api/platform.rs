//! What every service serves: health, readiness, metrics, OpenAPI and trace context.

use isp_testkit::eventually;
use isp_testkit::fixtures::plan_body;
use reqwest::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn health_ready_metrics_and_openapi_are_served() {
    let app = app().await;
    let h = app
        .request(reqwest::Method::GET, "/api/core/health", None, None)
        .await;
    assert_eq!(h.status, StatusCode::OK);
    let ready = eventually(10, || async {
        let r = app
            .request(reqwest::Method::GET, "/api/core/ready", None, None)
            .await;
        (r.status == StatusCode::OK).then_some(r)
    })
    .await;
    assert!(ready.is_some());
    let spec = app
        .request(reqwest::Method::GET, "/api/core/openapi.json", None, None)
        .await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["paths"]["/api/core/plans"]["post"].is_object());
    assert!(spec.body["paths"]["/api/core/staff/login"]["post"].is_object());
    assert!(spec.body["components"]["schemas"]["Plan"]["properties"]["price"].is_object());
    let m = app
        .http
        .get(format!("{}/api/core/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("http_requests_total"), "{m}");
    // The outbox is visible to operators: what was published, what still waits.
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/core/plans",
            &admin,
            json!({"name": "Metered", "downloadSpeed": 10, "uploadSpeed": 5, "price": 1000, "billingCycle": "Monthly"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let seen = eventually(10, || async {
        let m = app
            .http
            .get(format!("{}/api/core/metrics", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (m.contains("isp_outbox_published_total{schema=\"core\"}")
            && m.contains("isp_outbox_pending{schema=\"core\"} 0"))
        .then_some(())
    })
    .await;
    assert!(seen.is_some(), "no outbox metrics");
    let docs = app
        .http
        .get(format!("{}/api/core/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let nf = app
        .request(reqwest::Method::GET, "/api/core/nothing-here", None, None)
        .await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_requests_trace_context_travels_with_the_events_it_causes() {
    let app = app().await;
    let admin = app.admin_token().await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = app
        .http
        .post(format!("{}/api/core/plans", app.base))
        .header("authorization", format!("JWT {admin}"))
        .header("traceparent", tp)
        .json(&plan_body())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["traceparent"], tp);
    let pool = app.admin_pool().await;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM core.outbox WHERE type = 'plan.created'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored.as_deref(), Some(tp));
    // Without one, a fresh trace is started and returned.
    let r = app
        .http
        .get(format!("{}/api/core/health", app.base))
        .send()
        .await
        .unwrap();
    assert!(isp_events::trace::is_valid_traceparent(
        r.headers()["traceparent"].to_str().unwrap()
    ));
}

#[tokio::test]
async fn authenticated_custom_operations_declare_the_jwt_scheme_in_openapi() {
    let app = app().await;
    let spec = app
        .request(reqwest::Method::GET, "/api/core/openapi.json", None, None)
        .await
        .body;
    for (path, method) in [
        ("/api/core/staff/me", "get"),
        ("/api/core/staff/logout", "post"),
        ("/api/core/staff/unlock", "post"),
        ("/api/core/plans", "post"),
    ] {
        assert_eq!(
            spec["paths"][path][method]["security"][0]["jwt"],
            json!([]),
            "{method} {path}"
        );
    }
    assert!(spec["paths"]["/api/core/staff/login"]["post"]["security"].is_null());
}
