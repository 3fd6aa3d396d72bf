//! Staff: unique emails, hidden passwords, the last Admin, status and who may read or change staff.

use isp_testkit::fixtures::{partner_body, plan_body};
use reqwest::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn staff_rules_unique_email_hidden_password_and_last_admin() {
    let app = app().await;
    let admin = app.admin_token().await;
    let body = json!({"fullName": "Sam Sales", "email": "Sam@Example.com", "password": "password-123", "role": "Sales Agent", "status": "Active"});
    let r = app.post("/api/core/staff", &admin, body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["email"], "sam@example.com");
    assert!(r.body["doc"].get("password").is_none());
    let mut dup = body.clone();
    dup["email"] = json!("SAM@example.COM");
    let d = app.post("/api/core/staff", &admin, dup).await;
    assert_eq!(d.status, StatusCode::CONFLICT);
    assert_eq!(d.error_path(), Some("email"));

    let bad = app.post("/api/core/staff", &admin, json!({"fullName": "", "email": "nope", "password": "short", "role": "Boss", "status": "Active"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let mut paths = bad.error_paths();
    paths.sort();
    assert_eq!(paths, vec!["email", "fullName", "password", "role"]);
    let missing = app
        .post("/api/core/staff", &admin, json!({"fullName": "X"}))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.error_paths().contains(&"email".to_string()));
    let wrong_type = app
        .post("/api/core/staff", &admin, json!({"fullName": 5}))
        .await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong_type.error_path(), Some("fullName"));
    let not_json = app
        .http
        .post(format!("{}/api/core/staff", app.base))
        .bearer_auth(&admin)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);

    // The only Admin cannot be demoted or deactivated, nor delete themselves.
    let me = app.get("/api/core/staff/me", &admin).await;
    let my_id = me.body["user"]["id"].as_str().unwrap();
    let r = app
        .patch(
            &format!("/api/core/staff/{my_id}"),
            &admin,
            json!({"role": "Technician"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = app
        .delete(&format!("/api/core/staff/{my_id}"), &admin)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Nothing was half-written.
    assert_eq!(
        app.get("/api/core/staff/me", &admin).await.body["user"]["role"],
        "Admin"
    );
}

#[tokio::test]
async fn staff_status_defaults_to_active_and_patches_with_bad_input_name_the_field() {
    let app = app().await;
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/core/staff",
            &admin,
            json!({"fullName": "Nia Net", "email": "nia@test.local", "password": "password-123", "role": "Network Engineer"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["status"], "Active");
    let staff = r.body["doc"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.login("nia@test.local", "password-123").await.status,
        StatusCode::OK
    );
    let spec = app
        .request(reqwest::Method::GET, "/api/core/openapi.json", None, None)
        .await
        .body;
    let input = &spec["components"]["schemas"]["StaffmemberInput"];
    assert_eq!(
        input["properties"]["status"]["default"], "Active",
        "{input}"
    );
    assert!(!input["required"]
        .as_array()
        .unwrap()
        .contains(&json!("status")));

    let plan = app.post("/api/core/plans", &admin, plan_body()).await.id();
    let partner = app
        .post("/api/core/partners", &admin, partner_body("0700111222"))
        .await
        .id();
    for (coll, id, field, value) in [
        ("plans", &plan, "price", json!("abc")),
        ("plans", &plan, "price", json!(0)),
        ("plans", &plan, "downloadSpeed", json!(-1)),
        ("plans", &plan, "billingCycle", json!("Weekly")),
        ("plans", &plan, "name", json!(null)),
        ("plans", &plan, "name", json!("")),
        ("plans", &plan, "ipAssignmentType", json!("Static-Public")),
        ("partners", &partner, "phoneNumber", json!("12")),
        ("partners", &partner, "status", json!("Dormant")),
        ("partners", &partner, "commissionRate", json!(-1)),
        ("partners", &partner, "buildings", json!("not-a-list")),
        ("partners", &partner, "fullName", json!(7)),
        ("staff", &staff, "email", json!("nope")),
        ("staff", &staff, "role", json!("Boss")),
        ("staff", &staff, "status", json!("Asleep")),
        ("staff", &staff, "password", json!("short")),
        ("staff", &staff, "phoneNumber", json!("abc")),
        ("staff", &staff, "fullName", json!(null)),
    ] {
        let r = app
            .patch(
                &format!("/api/core/{coll}/{id}"),
                &admin,
                json!({ field: value.clone() }),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{coll}.{field}={value}: {:?}",
            r.body
        );
        let want = if field == "ipAssignmentType" {
            "staticIpPool"
        } else {
            field
        };
        assert_eq!(r.error_path(), Some(want), "{coll}.{field}={value}");
    }
    // Unknown ids and malformed ids.
    let r = app
        .patch("/api/core/plans/not-an-id", &admin, json!({"notes": "x"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("id"));
    let r = app
        .patch(
            &format!("/api/core/plans/{}", uuid::Uuid::new_v4()),
            &admin,
            json!({"notes": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_admin_reads_updates_or_deletes_staff_and_collections_need_a_token() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (_, victim) = app.staff_token("Technician").await;
    for role in [
        "Sales Agent",
        "Billing Manager",
        "Network Engineer",
        "Technician",
        "Support Agent",
    ] {
        let (t, own) = app.staff_token(role).await;
        for id in [&victim, &own] {
            let path = format!("/api/core/staff/{id}");
            assert_eq!(
                app.get(&path, &t).await.status,
                StatusCode::FORBIDDEN,
                "{role} reads staff"
            );
            assert_eq!(
                app.patch(&path, &t, json!({"role": "Admin"})).await.status,
                StatusCode::FORBIDDEN,
                "{role} updates staff"
            );
            assert_eq!(
                app.delete(&path, &t).await.status,
                StatusCode::FORBIDDEN,
                "{role} deletes staff"
            );
        }
        // Nothing changed.
        let doc = app
            .get(&format!("/api/core/staff/{own}"), &admin)
            .await
            .body;
        assert_eq!(doc["role"], role);
    }
    let plan = app.post("/api/core/plans", &admin, plan_body()).await.id();
    for coll in ["staff", "plans", "partners"] {
        let one = format!("/api/core/{coll}/{plan}");
        let list = format!("/api/core/{coll}");
        for (method, path) in [
            (reqwest::Method::GET, &list),
            (reqwest::Method::POST, &list),
            (reqwest::Method::GET, &one),
            (reqwest::Method::PATCH, &one),
            (reqwest::Method::DELETE, &one),
        ] {
            let r = app
                .request(method.clone(), path, None, Some(&json!({})))
                .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(r.body["errors"][0]["message"].is_string());
            let r = app
                .request(method.clone(), path, Some("not.a.token"), Some(&json!({})))
                .await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} bad token"
            );
        }
    }
    assert_eq!(
        app.get(&format!("/api/core/plans/{plan}"), &admin)
            .await
            .status,
        StatusCode::OK
    );
}
