//! List queries and bad input: filters, sorting, paging, and 400s that name the field.

use isp_testkit::fixtures::{partner_body, plan_body};
use reqwest::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn list_queries_filter_sort_and_page_on_whitelisted_fields() {
    let app = app().await;
    let admin = app.admin_token().await;
    for (i, (speed, price)) in [(5, 1000), (10, 2500), (20, 4000), (50, 7000)]
        .iter()
        .enumerate()
    {
        let b = json!({"name": format!("Fibre {i}"), "downloadSpeed": speed, "uploadSpeed": speed, "price": price, "billingCycle": if i % 2 == 0 {"Monthly"} else {"Quarterly"}});
        assert_eq!(
            app.post("/api/core/plans", &admin, b).await.status,
            StatusCode::CREATED
        );
    }
    let r = app
        .get(
            "/api/core/plans?where[price][greater_than_equal]=2500&sort=-downloadSpeed&limit=2",
            &admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["totalDocs"], 3);
    assert_eq!(r.body["totalPages"], 2);
    assert_eq!(r.body["hasNextPage"], true);
    assert_eq!(r.body["docs"][0]["downloadSpeed"], 50);
    let p2 = app.get("/api/core/plans?where[price][greater_than_equal]=2500&sort=-downloadSpeed&limit=2&page=2", &admin).await;
    assert_eq!(p2.body["docs"][0]["downloadSpeed"], 10);
    assert_eq!(p2.body["prevPage"], 1);
    let q = app
        .get(
            "/api/core/plans?where[billingCycle][in]=Quarterly&where[name][like]=fibre",
            &admin,
        )
        .await;
    assert_eq!(q.body["totalDocs"], 2);
    let q = app
        .get(
            "/api/core/plans?where[notes][exists]=false&where[downloadSpeed][not_in]=5,10",
            &admin,
        )
        .await;
    assert_eq!(q.body["totalDocs"], 2);
    let q = app.get("/api/core/plans?where[or][0][downloadSpeed][equals]=5&where[or][1][downloadSpeed][equals]=50", &admin).await;
    assert_eq!(q.body["totalDocs"], 2);
    for bad in [
        "where[passwordHash][equals]=x",
        "where[price][regex]=1",
        "sort=nope",
        "limit=101",
        "where[price][greater_than]=abc",
    ] {
        let r = app.get(&format!("/api/core/plans?{bad}"), &admin).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // An injection attempt is only ever a bound value.
    let r = app
        .get(
            "/api/core/plans?where[name][equals]=x'%20OR%20'1'='1",
            &admin,
        )
        .await;
    assert_eq!(r.body["totalDocs"], 0);
    // Password hashes cannot be filtered on, even by an Admin.
    let r = app
        .get("/api/core/staff?where[password][exists]=true", &admin)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn nul_characters_oversized_numbers_and_unsupported_operators_are_400_naming_the_field() {
    let app = TestApp::spawn(&[service!(svc_core), service!(svc_crm)]).await;
    let admin = app.admin_token().await;
    // Text fields, on create and on update.
    let mut b = plan_body();
    b["name"] = json!("Home\u{0}Basic");
    let r = app.post("/api/core/plans", &admin, b).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("name"));
    let mut b = partner_body("0711000222");
    b["fullName"] = json!("Jane\u{0}");
    let r = app.post("/api/core/partners", &admin, b).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("fullName"));
    let plan = app.post("/api/core/plans", &admin, plan_body()).await.id();
    let r = app
        .patch(
            &format!("/api/core/plans/{plan}"),
            &admin,
            json!({"notes": "a\u{0}b"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("notes"));
    // Filter values, including the JSON of a geolocation.
    for q in [
        "/api/core/plans?where[name][equals]=a%00b",
        "/api/core/plans?where[name][like]=%00",
        "/api/core/plans?where[name][in]=x,a%00b",
    ] {
        let r = app.get(q, &admin).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {:?}", r.body);
        assert_eq!(r.error_path(), Some("where.name"), "{q}");
    }
    let r = app
        .get(
            "/api/crm/buildings?where[location][equals]=%5B%22%5Cu0000%22%5D",
            &admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("where.location"));
    // Login email.
    let r = app.login("adm\u{0}in@test.local", "whatever-123").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("email"));
    // Money beyond numeric(14,2).
    let mut b = plan_body();
    b["name"] = json!("Too dear");
    b["price"] = json!("1000000000000");
    let r = app.post("/api/core/plans", &admin, b.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("price"));
    b["price"] = json!("999999999999.99");
    let r = app.post("/api/core/plans", &admin, b).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["price"], "999999999999.99");
    // Operators a field's kind does not support.
    for q in [
        "/api/crm/buildings?where[location][in]=1",
        "/api/crm/buildings?where[location][not_in]=1,2",
        "/api/crm/buildings?where[location][greater_than]=1",
        "/api/crm/buildings?where[location][like]=x",
    ] {
        let r = app.get(q, &admin).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {:?}", r.body);
        assert_eq!(r.error_path(), Some("where.location"), "{q}");
    }
    for q in [
        "/api/core/partners?where[buildings][greater_than]=x",
        "/api/core/plans?where[planEnabled][less_than]=true",
    ] {
        let r = app.get(q, &admin).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {:?}", r.body);
    }
    assert_eq!(
        app.get("/api/core/plans?where[planEnabled][in]=true,false", &admin)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn database_errors_from_bad_input_are_400_and_concurrency_failures_are_retryable() {
    let app = app().await;
    let pool = app.ctx("core").pool.clone();
    for (code, status) in [
        ("22021", 400),
        ("22P05", 400),
        ("22001", 400),
        ("22003", 400),
        ("40P01", 503),
        ("40001", 503),
        ("XX000", 500),
    ] {
        let e = sqlx::query(&format!(
            "DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '{code}'; END $$"
        ))
        .execute(&pool)
        .await
        .unwrap_err();
        let api = isp_platform::ApiError::from(e);
        assert_eq!(api.status().as_u16(), status, "{code}");
    }
    // And the real thing: NUL in text reaching Postgres through a hand-written query.
    let e = sqlx::query("SELECT $1::text")
        .bind("a\u{0}b")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(isp_platform::ApiError::from(e).status().as_u16(), 400);
}
