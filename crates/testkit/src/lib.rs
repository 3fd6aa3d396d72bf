//! The test harness. Every test gets its own Postgres database (on the private
//! server `script/test` starts), its own `nats-server` process and, when it asks,
//! its own FreeRADIUS; then it starts the services it needs in-process on a free
//! port and talks to them over real HTTP.

pub mod freeradius;
pub mod nats;
pub mod pg;

use std::sync::Arc;
use std::time::Duration;

use isp_platform::auth::Keys;
use isp_platform::config::PlatformConfig;
use isp_platform::runtime::{self, ServiceInfo, Shared, StartFn};
use isp_platform::ServiceContext;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use nats::TestNats;
pub use pg::TestDb;

pub const ADMIN_EMAIL: &str = "admin@test.local";
pub const ADMIN_PASSWORD: &str = "admin-password-123";

/// A running set of services.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub db: TestDb,
    pub nats: TestNats,
    pub shared: Shared,
    pub contexts: Vec<Arc<ServiceContext>>,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP answer: status and JSON body (Null when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Res {
    pub status: StatusCode,
    pub body: Value,
}

impl Res {
    /// The `path` of the first error entry.
    pub fn error_path(&self) -> Option<&str> {
        self.body["errors"][0]["path"].as_str()
    }
    pub fn error_paths(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["path"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl TestApp {
    /// Starts `services` (in order) against a fresh database and NATS.
    pub async fn spawn(services: &[(ServiceInfo, StartFn)]) -> TestApp {
        init_tracing();
        // Read by core's bootstrap; the same values in every test, so sharing the
        // process environment between tests is harmless.
        std::env::set_var("ISP_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL);
        std::env::set_var("ISP_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD);
        std::env::set_var("ISP_DATABASE_POOL_SIZE", "5");
        let db = TestDb::create()
            .await
            .expect("test database (is the private Postgres up? run script/test)");
        let nats = TestNats::start().await.expect("nats-server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let data_dir =
            std::env::temp_dir().join(format!("isp-test-{}", uuid::Uuid::new_v4().simple()));
        let config = PlatformConfig {
            data_dir,
            database_admin_url: Some(db.admin_url.clone()),
            database_host: db.host.clone(),
            database_port: db.port,
            database_name: db.name.clone(),
            nats_url: nats.url.clone(),
            timezone: chrono_tz::Africa::Nairobi,
            public_url: base.clone(),
            internal_url: base.clone(),
        };
        let shutdown = CancellationToken::new();
        let (keys, _) = Keys::generate().expect("keys");
        let client = isp_events::connect_nats(&nats.url)
            .await
            .expect("nats client");
        let shared = Shared {
            config,
            keys,
            nats: client,
            shutdown: shutdown.clone(),
        };
        let mut router = axum::Router::new();
        let mut contexts = vec![];
        for (info, start) in services {
            let ctx = runtime::context(*info, &shared)
                .await
                .expect("service context");
            contexts.push(ctx.clone());
            router = router.merge(
                start(ctx)
                    .await
                    .unwrap_or_else(|e| panic!("starting {}: {e:?}", info.name)),
            );
        }
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let _ = isp_platform::http::serve(listener, router, sd).await;
        });
        TestApp {
            base,
            db,
            nats,
            shared,
            contexts,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    pub fn ctx(&self, name: &str) -> Arc<ServiceContext> {
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("service {name} not started"))
    }

    /// A pool connected as the database superuser, for assertions on any schema.
    pub async fn admin_pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.db.admin_url)
            .await
            .expect("admin pool")
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Res {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("JWT {t}"));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.expect("HTTP request");
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        Res {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Res {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Res {
        self.request(reqwest::Method::POST, path, Some(token), Some(&body))
            .await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Res {
        self.request(reqwest::Method::PATCH, path, Some(token), Some(&body))
            .await
    }
    pub async fn delete(&self, path: &str, token: &str) -> Res {
        self.request(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Res {
        self.request(
            reqwest::Method::POST,
            "/api/core/staff/login",
            None,
            Some(&json!({"email": email, "password": password})),
        )
        .await
    }

    /// The bootstrap Admin's token (core must be running).
    pub async fn admin_token(&self) -> String {
        let r = self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(r.status, StatusCode::OK, "admin login: {:?}", r.body);
        r.body["token"].as_str().expect("token").to_string()
    }

    /// Creates a staff member with `role` through the API and logs them in.
    /// Returns (token, staff id).
    pub async fn staff_token(&self, role: &str) -> (String, String) {
        let admin = self.admin_token().await;
        let email = format!(
            "{}-{}@test.local",
            role.to_lowercase().replace(' ', "-"),
            uuid::Uuid::new_v4().simple()
        );
        let r = self
            .post("/api/core/staff", &admin, json!({"fullName": format!("Test {role}"), "email": email, "password": "password-123", "role": role, "status": "Active"}))
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "creating {role}: {:?}",
            r.body
        );
        let id = r.body["doc"]["id"].as_str().expect("id").to_string();
        let l = self.login(&email, "password-123").await;
        assert_eq!(l.status, StatusCode::OK, "login {role}: {:?}", l.body);
        (l.body["token"].as_str().expect("token").to_string(), id)
    }

    /// A token for a service with `scopes`, signed by the platform key.
    pub fn service_token(&self, service: &str, scopes: &[&str]) -> String {
        self.shared
            .keys
            .service_token(service, scopes)
            .expect("service token")
    }
}

/// Polls `f` until it returns Some, for up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
