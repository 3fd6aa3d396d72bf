//! Issue 7, section 6, over real HTTP, Postgres and NATS: service tokens (lifetime,
//! audience, renewal, field write scopes), staff tokens for members a service has
//! not heard of, and the Zabbix webhook authenticating before it parses.

use isp_platform::auth::{Claims, MAX_SERVICE_TOKEN_TTL};
use isp_platform::client::{TokenOrigin, TokenSource};
use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_platform::staff_access::StaffAccess;
use isp_testkit::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn core() -> (ServiceInfo, StartFn) {
    (svc_core::INFO, |c| Box::pin(svc_core::start(c)))
}
fn crm() -> (ServiceInfo, StartFn) {
    (svc_crm::INFO, |c| Box::pin(svc_crm::start(c)))
}
fn billing() -> (ServiceInfo, StartFn) {
    (svc_billing::INFO, |c| Box::pin(svc_billing::start(c)))
}
fn noc() -> (ServiceInfo, StartFn) {
    (svc_noc::INFO, |c| Box::pin(svc_noc::start(c)))
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.admin_pool().await)
        .await
        .unwrap()
}

/// A subscriber in Billing (plan made at Core, projected), as Admin.
async fn subscriber(app: &TestApp, admin: &str) -> String {
    let r = app
        .post(
            "/api/core/plans",
            admin,
            json!({"name": "Home 10", "downloadSpeed": 10, "uploadSpeed": 5, "price": 2500, "billingCycle": "Monthly"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let plan = r.body["doc"]["id"].as_str().unwrap().to_string();
    let seen = eventually(15, || async {
        (count(app, &format!("SELECT count(*) FROM billing.plans WHERE id = '{plan}'")).await == 1)
            .then_some(())
    })
    .await;
    assert!(seen.is_some(), "billing never learned the plan");
    let r = app
        .post(
            "/api/billing/subscribers",
            admin,
            json!({"firstName": "Amina", "lastName": "Otieno", "mpesaNumber": "0712345678",
                   "servicePlan": plan, "billingCycle": "Monthly"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["doc"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_service_token_writes_a_restricted_field_only_when_a_scope_names_it() {
    let app = TestApp::spawn(&[core(), billing()]).await;
    let admin = app.admin_token().await;
    let id = subscriber(&app, &admin).await;
    let path = format!("/api/billing/subscribers/{id}");

    // May update subscribers, but addressNotes is kept from some roles (Admin only).
    let plain = app.service_token("support", &["billing.subscribers.update", "billing.subscribers.read"]);
    let r = app
        .patch(&path, &plain, json!({"addressNotes": "Gate B, blue door"}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(r.error_paths(), vec!["addressNotes"]);
    let r = app.get(&path, &admin).await;
    assert!(r.body["addressNotes"].is_null(), "nothing written: {:?}", r.body);

    // The same token naming the field may write it, and only it.
    let named = app.service_token(
        "support",
        &[
            "billing.subscribers.update",
            "billing.subscribers.addressNotes.write",
        ],
    );
    let r = app
        .patch(&path, &named, json!({"addressNotes": "Gate B, blue door"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .patch(
            &path,
            &named,
            json!({"addressNotes": "Gate C", "email": "amina@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(r.error_paths(), vec!["email"]);
    let r = app.get(&path, &admin).await;
    assert_eq!(r.body["addressNotes"], "Gate B, blue door");
    assert!(r.body["email"].is_null());
}

#[tokio::test]
async fn service_tokens_are_for_their_audience_and_renewed_at_core() {
    let app = TestApp::spawn(&[core(), crm(), billing()]).await;
    let keys = &app.shared.keys;
    let ok = app.service_token("crm", &["billing.subscribers.read"]);
    let r = app.get("/api/billing/subscribers", &ok).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Billing's scope in a token addressed to CRM only: Billing refuses it.
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: "service:crm".into(),
        exp: now + 3600,
        iat: now,
        email: None,
        role: None,
        name: Some("crm".into()),
        scopes: vec!["billing.subscribers.read".into()],
        aud: vec!["crm".into()],
        ver: 0,
    };
    let misaddressed = keys.sign(&claims).unwrap();
    let r = app.get("/api/billing/subscribers", &misaddressed).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    // A year-long token (as minted before lifetimes were bounded) is refused too.
    let long = keys
        .sign(&Claims {
            exp: now + 365 * 24 * 3600,
            aud: vec!["billing".into()],
            ..claims.clone()
        })
        .unwrap();
    let r = app.get("/api/billing/subscribers", &long).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    let r = app
        .post("/api/core/service-tokens/renew", &long, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);

    // A token file past half its life: the runtime renews it at core (same
    // rights, later expiry) and writes the renewed token back, owner-only.
    let half_spent = keys
        .sign(&Claims {
            iat: now - 3 * 3600,
            exp: now + 3600,
            aud: vec!["billing".into()],
            ..claims.clone()
        })
        .unwrap();
    let file = app.shared.config.data_dir.join("tokens").join("crm.token");
    isp_platform::config::write_secret_file(&file, &half_spent, true).unwrap();
    let source = TokenSource::new(TokenOrigin::File(file.clone()), app.base.clone());
    let renewed = source.token().await.expect("renewed");
    assert_ne!(renewed, half_spent);
    let c = keys.verify(&renewed).unwrap();
    assert_eq!(c.sub, "service:crm");
    assert_eq!(c.scopes, claims.scopes);
    assert_eq!(c.aud, vec!["billing".to_string()]);
    assert!(c.exp > now + 3600 && c.exp - c.iat <= MAX_SERVICE_TOKEN_TTL);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), renewed);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    // Fresh enough now: held, not renewed again.
    assert_eq!(source.token().await.unwrap(), renewed);
    let r = app.get("/api/billing/subscribers", &renewed).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // A service that calls nobody still keeps its token alive in the background.
    let quiet = app.shared.config.data_dir.join("tokens").join("quiet.token");
    isp_platform::config::write_secret_file(&quiet, &half_spent, true).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    TokenSource::new(TokenOrigin::File(quiet.clone()), app.base.clone()).keep_fresh(stop.clone());
    let rewritten = eventually(10, || async {
        let t = std::fs::read_to_string(&quiet).unwrap();
        (t.trim() != half_spent).then_some(t)
    })
    .await
    .expect("renewed in the background");
    assert!(keys.verify(rewritten.trim()).unwrap().exp > now + 3600);
    stop.cancel();

    // An expired token cannot be renewed: the call fails, it is not sent unsigned.
    let expired = keys
        .sign(&Claims {
            iat: now - 7200,
            exp: now - 3600,
            ..claims.clone()
        })
        .unwrap();
    let source = TokenSource::new(TokenOrigin::Fixed(expired), app.base.clone());
    assert!(source.token().await.is_err());
    // Staff renew their tokens with refresh-token, not here.
    let admin = app.admin_token().await;
    let r = app
        .post("/api/core/service-tokens/renew", &admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
}

#[tokio::test]
async fn a_staff_token_for_a_member_a_service_has_not_heard_of_is_checked_with_core() {
    let app = TestApp::spawn(&[core(), crm()]).await;
    let (token, staff_id) = app.staff_token("Sales Agent").await;
    let projected = format!("SELECT count(*) FROM crm.staff_access WHERE staff_id = '{staff_id}'");
    let seen = eventually(15, || async { (count(&app, &projected).await == 1).then_some(()) }).await;
    assert!(seen.is_some(), "crm never heard of the member");
    // As if CRM had not heard of them yet (a projection catching up).
    sqlx::query("DELETE FROM crm.staff_access WHERE staff_id = $1::uuid")
        .bind(&staff_id)
        .execute(&app.admin_pool().await)
        .await
        .unwrap();
    let r = app.get("/api/crm/buildings", &token).await;
    assert_eq!(r.status, StatusCode::OK, "core vouched for the token: {:?}", r.body);
    // Core's word is kept as the oldest possible snapshot: any event overrides it.
    let oldest = count(
        &app,
        &format!("SELECT count(*) FROM crm.staff_access WHERE staff_id = '{staff_id}' AND active AND updated_at = '-infinity'"),
    )
    .await;
    assert_eq!(oldest, 1);
    // Logging out reaches CRM as an event, over that row.
    let r = app
        .post("/api/core/staff/logout", &token, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let refused = eventually(15, || async {
        (app.get("/api/crm/buildings", &token).await.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert!(refused.is_some(), "the logged-out token still works at crm");

    // A well-signed token for a member core does not have: refused, not let through.
    let now = chrono::Utc::now().timestamp();
    let ghost_id = Uuid::new_v4();
    let ghost = app
        .shared
        .keys
        .sign(&Claims {
            sub: ghost_id.to_string(),
            exp: now + 600,
            iat: now,
            email: Some("ghost@test.local".into()),
            role: Some(isp_platform::auth::Role::Admin),
            name: None,
            scopes: vec![],
            aud: vec![],
            ver: 0,
        })
        .unwrap();
    let r = app.get("/api/crm/buildings", &ghost).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM crm.staff_access WHERE staff_id = '{ghost_id}'")).await,
        0,
        "nothing recorded for the ghost"
    );

    // Core out of reach: fail closed with a 503 (nothing done, resend), never a pass.
    let (fresh, fresh_id) = app.staff_token("Sales Agent").await;
    let unreachable = StaffAccess::projection(app.ctx("crm").pool.clone()).with_core("http://127.0.0.1:9");
    sqlx::query("DELETE FROM crm.staff_access WHERE staff_id = $1::uuid")
        .bind(&fresh_id)
        .execute(&app.admin_pool().await)
        .await
        .unwrap();
    let e = unreachable
        .check(fresh_id.parse().unwrap(), 0, &fresh)
        .await
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_zabbix_webhook_authenticates_before_it_parses_and_keeps_its_token_owner_only() {
    let app = TestApp::spawn(&[core(), noc()]).await;
    let file = app.shared.config.data_dir.join("keys/zabbix-webhook.token");
    let token = std::fs::read_to_string(&file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let send = |auth: Option<String>, body: &'static str| {
        let app = &app;
        async move {
            let mut req = app
                .http
                .post(format!("{}/api/noc/zabbix/webhook", app.base))
                .header("content-type", "application/json")
                .body(body);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let res = req.send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Without the token, a body that is not even JSON gets the same 401 as any.
    let (status, body) = send(None, "{not json").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = send(Some("Bearer wrong".into()), "{\"eventId\": 1}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = send(Some(format!("Bearer {}", token.trim())), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
