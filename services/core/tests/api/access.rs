//! Roles by operation on Core's collections, and each service role confined to its own schema.

use isp_testkit::fixtures::{partner_body, plan_body};
use reqwest::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn role_by_operation_matrix_for_core_collections() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = app.post("/api/core/plans", &admin, plan_body()).await.id();
    let partner = app
        .post("/api/core/partners", &admin, partner_body("0799000001"))
        .await
        .id();
    let roles = [
        "Sales Agent",
        "Billing Manager",
        "Network Engineer",
        "Technician",
        "Support Agent",
    ];
    for role in roles {
        let (t, _) = app.staff_token(role).await;
        let sales = role == "Sales Agent";
        // staff: Admin only.
        assert_eq!(
            app.get("/api/core/staff", &t).await.status,
            StatusCode::FORBIDDEN,
            "{role} list staff"
        );
        let s = app.post("/api/core/staff", &t, json!({"fullName": "X", "email": "x@y.co", "password": "password-123", "role": "Admin", "status": "Active"})).await;
        assert_eq!(s.status, StatusCode::FORBIDDEN, "{role} create staff");
        // plans: everyone reads, Admin writes.
        assert_eq!(
            app.get("/api/core/plans", &t).await.status,
            StatusCode::OK,
            "{role} list plans"
        );
        assert_eq!(
            app.get(&format!("/api/core/plans/{plan}"), &t).await.status,
            StatusCode::OK,
            "{role} get plan"
        );
        let mut p = plan_body();
        p["name"] = json!(format!("by {role}"));
        assert_eq!(
            app.post("/api/core/plans", &t, p).await.status,
            StatusCode::FORBIDDEN,
            "{role} create plan"
        );
        assert_eq!(
            app.patch(
                &format!("/api/core/plans/{plan}"),
                &t,
                json!({"notes": "x"})
            )
            .await
            .status,
            StatusCode::FORBIDDEN,
            "{role} update plan"
        );
        assert_eq!(
            app.delete(&format!("/api/core/plans/{plan}"), &t)
                .await
                .status,
            StatusCode::FORBIDDEN,
            "{role} delete plan"
        );
        // partners: Sales Agent and Admin only.
        let expect = if sales {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(
            app.get("/api/core/partners", &t).await.status,
            expect,
            "{role} list partners"
        );
        assert_eq!(
            app.patch(
                &format!("/api/core/partners/{partner}"),
                &t,
                json!({"perks": true})
            )
            .await
            .status,
            expect,
            "{role} update partner"
        );
        let c = app
            .post(
                "/api/core/partners",
                &t,
                partner_body(&format!(
                    "07980000{:02}",
                    roles.iter().position(|r| *r == role).unwrap()
                )),
            )
            .await;
        assert_eq!(
            c.status,
            if sales {
                StatusCode::CREATED
            } else {
                StatusCode::FORBIDDEN
            },
            "{role} create partner"
        );
    }
    let (sales, _) = app.staff_token("Sales Agent").await;
    assert_eq!(
        app.delete(&format!("/api/core/partners/{partner}"), &sales)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.delete(&format!("/api/core/plans/{plan}"), &admin)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&format!("/api/core/plans/{plan}"), &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn each_service_role_is_confined_to_its_own_schema() {
    let app = TestApp::spawn(&[service!(svc_core), service!(svc_crm)]).await;
    let crm_pool = app.ctx("crm").pool.clone();
    let err = sqlx::query("SELECT count(*) FROM core.staff")
        .execute(&crm_pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = sqlx::query("CREATE TABLE core.evil (id int)")
        .execute(&crm_pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = sqlx::query("CREATE TABLE public.evil (id int)")
        .execute(&crm_pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    // Core's role reads its own tables; its search_path is its schema.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM staff")
        .fetch_one(&app.ctx("core").pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&crm_pool)
        .await
        .unwrap();
    assert_eq!(schema, "crm");
}
