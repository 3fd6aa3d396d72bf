//! Logging in and out: passwords, lockouts, inactive staff, refresh and revoked tokens.

use isp_testkit::{eventually, ADMIN_EMAIL, ADMIN_PASSWORD};
use reqwest::StatusCode;
use serde_json::json;

use super::*;

/// Polls `path` with `token` until it answers `want` (at most 15 s).
async fn answers(app: &TestApp, path: &str, token: &str, want: StatusCode) -> bool {
    eventually(15, || async {
        (app.get(path, token).await.status == want).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test]
async fn bootstrap_admin_logs_in_and_sees_itself_without_password() {
    let app = app().await;
    let r = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["user"]["role"], "Admin");
    assert!(r.body["user"].get("password").is_none());
    assert!(r.body["exp"].as_i64().unwrap() > 0);
    let token = r.body["token"].as_str().unwrap();
    let me = app.get("/api/core/staff/me", token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["user"]["email"], ADMIN_EMAIL);
    // Bearer works as well as JWT.
    let res = app
        .http
        .get(format!("{}/api/core/staff/me", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_401_and_repeated_failures_lock_the_account() {
    let app = app().await;
    assert_eq!(
        app.login("nobody@test.local", "whatever-123").await.status,
        StatusCode::UNAUTHORIZED
    );
    let (_, _) = app.staff_token("Support Agent").await;
    let admin = app.admin_token().await;
    let list = app
        .get(
            "/api/core/staff?where[role][equals]=Support%20Agent",
            &admin,
        )
        .await;
    let email = list.body["docs"][0]["email"].as_str().unwrap().to_string();
    for _ in 0..4 {
        assert_eq!(
            app.login(&email, "wrong-password").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let fifth = app.login(&email, "wrong-password").await;
    assert_eq!(fifth.status, StatusCode::UNAUTHORIZED);
    assert!(
        fifth.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{:?}",
        fifth.body
    );
    // Even the right password is refused while locked.
    let locked = app.login(&email, "password-123").await;
    assert_eq!(locked.status, StatusCode::UNAUTHORIZED);
    assert!(locked.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("locked"));
    // An Admin unlocks it.
    let u = app
        .post("/api/core/staff/unlock", &admin, json!({"email": email}))
        .await;
    assert_eq!(u.status, StatusCode::OK, "{:?}", u.body);
    assert_eq!(
        app.login(&email, "password-123").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn inactive_staff_cannot_log_in_and_their_tokens_stop_working() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (token, id) = app.staff_token("Technician").await;
    assert_eq!(
        app.get("/api/core/staff/me", &token).await.status,
        StatusCode::OK
    );
    let r = app
        .patch(
            &format!("/api/core/staff/{id}"),
            &admin,
            json!({"status": "Inactive"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        app.get("/api/core/staff/me", &token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let email = r.body["doc"]["email"].as_str().unwrap();
    let l = app.login(email, "password-123").await;
    assert_eq!(l.status, StatusCode::UNAUTHORIZED);
    assert!(l.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("inactive"));
}

#[tokio::test]
async fn logout_ends_the_session_and_refresh_issues_a_new_token() {
    let app = app().await;
    let token = app.admin_token().await;
    let r = app
        .post("/api/core/staff/refresh-token", &token, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let fresh = r.body["refreshedToken"].as_str().unwrap().to_string();
    assert_eq!(
        app.post("/api/core/staff/logout", &fresh, json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/core/staff/me", &fresh).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/core/staff/me", "garbage").await.status,
        StatusCode::UNAUTHORIZED
    );
    let none = app
        .request(reqwest::Method::GET, "/api/core/staff/me", None, None)
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.body["errors"][0]["message"].is_string());
}

#[tokio::test]
async fn ending_a_session_revokes_the_old_token_on_core_and_on_other_services() {
    let app = TestApp::spawn(&[service!(svc_core), service!(svc_crm)]).await;
    let admin = app.admin_token().await;
    let service = app.service_token("test", &["crm.buildings.read"]);
    for how in ["logout", "deactivate", "role", "password", "delete"] {
        let (token, id) = app.staff_token("Sales Agent").await;
        let email = app.get(&format!("/api/core/staff/{id}"), &admin).await.body["email"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            app.get("/api/core/partners", &token).await.status,
            StatusCode::OK,
            "{how}: before"
        );
        // CRM hears of the member through staff.created first.
        assert!(
            answers(&app, "/api/crm/buildings", &token, StatusCode::OK).await,
            "{how}: CRM before"
        );
        let staff = format!("/api/core/staff/{id}");
        let r = match how {
            "logout" => app.post("/api/core/staff/logout", &token, json!({})).await,
            "deactivate" => {
                app.patch(&staff, &admin, json!({"status": "Inactive"}))
                    .await
            }
            "role" => {
                app.patch(&staff, &admin, json!({"role": "Support Agent"}))
                    .await
            }
            "password" => {
                app.patch(&staff, &admin, json!({"password": "another-password-1"}))
                    .await
            }
            _ => app.delete(&staff, &admin).await,
        };
        assert_eq!(r.status, StatusCode::OK, "{how}: {:?}", r.body);
        // Core decides on its own staff table: at once.
        let c = app.get("/api/core/partners", &token).await;
        assert_eq!(
            c.status,
            StatusCode::UNAUTHORIZED,
            "{how}: core {:?}",
            c.body
        );
        let c = app
            .patch(
                &format!("/api/core/staff/{id}"),
                &token,
                json!({"fullName": "x"}),
            )
            .await;
        assert_eq!(c.status, StatusCode::UNAUTHORIZED, "{how}: core write");
        // CRM once staff.updated (with the new token version) has arrived.
        assert!(
            answers(&app, "/api/crm/buildings", &token, StatusCode::UNAUTHORIZED).await,
            "{how}: CRM still accepts the old token"
        );
        let w = app
            .post(
                "/api/crm/buildings",
                &token,
                json!({"name": "B", "address": "A", "status": "Prospecting"}),
            )
            .await;
        assert_eq!(w.status, StatusCode::UNAUTHORIZED, "{how}: CRM write");
        // A new login gets a token that works again (where the member still may).
        let password = if how == "password" {
            "another-password-1"
        } else {
            "password-123"
        };
        let l = app.login(&email, password).await;
        match how {
            "deactivate" | "delete" => {
                assert_eq!(l.status, StatusCode::UNAUTHORIZED, "{how}: login")
            }
            _ => {
                assert_eq!(l.status, StatusCode::OK, "{how}: login {:?}", l.body);
                let fresh = l.body["token"].as_str().unwrap();
                let want = if how == "role" {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::OK
                };
                assert_eq!(
                    app.get("/api/crm/buildings", fresh).await.status,
                    want,
                    "{how}: CRM with the new token"
                );
                assert_eq!(
                    app.get("/api/core/partners", fresh).await.status,
                    want,
                    "{how}: core with the new token"
                );
            }
        }
    }
    // Service tokens are not staff sessions.
    assert_eq!(
        app.get("/api/crm/buildings", &service).await.status,
        StatusCode::OK
    );
    // The staff events carry the version the projections compare against.
    let pool = app.admin_pool().await;
    let max: Option<i32> = sqlx::query_scalar("SELECT max(token_version) FROM crm.staff_access")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(max.unwrap_or(0) >= 1);
}

#[tokio::test]
async fn login_with_a_missing_field_names_it() {
    let app = app().await;
    for (body, path) in [
        (json!({"email": ADMIN_EMAIL}), "password"),
        (json!({"password": ADMIN_PASSWORD}), "email"),
        (json!({}), "email"),
        (json!({"email": 5, "password": "x"}), "email"),
    ] {
        let r = app
            .request(
                reqwest::Method::POST,
                "/api/core/staff/login",
                None,
                Some(&body),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert_eq!(r.error_path(), Some(path), "{body}: {:?}", r.body);
    }
}

#[tokio::test]
async fn a_locked_account_unlocks_itself_when_the_lock_time_has_passed() {
    let app = app().await;
    let (_, id) = app.staff_token("Support Agent").await;
    let admin = app.admin_token().await;
    let email = app.get(&format!("/api/core/staff/{id}"), &admin).await.body["email"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..5 {
        assert_eq!(
            app.login(&email, "wrong-password").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let locked = app.login(&email, "password-123").await;
    assert!(locked.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("locked"));
    // The lock time is process-wide configuration (ISP_LOCK_TIME_SECONDS, read at
    // start); rather than wait ten minutes, let them pass in the database.
    let pool = app.admin_pool().await;
    let until: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT lock_until FROM core.staff WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let until = until.expect("locked until");
    let minutes = (until - chrono::Utc::now()).num_seconds();
    assert!(
        (590..=600).contains(&minutes),
        "default lock time: {minutes}s"
    );
    sqlx::query(
        "UPDATE core.staff SET lock_until = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    // One more failure after the lock is not a new lock: the count started over.
    assert!(
        !app.login(&email, "wrong-password").await.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("locked")
    );
    let ok = app.login(&email, "password-123").await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
}
