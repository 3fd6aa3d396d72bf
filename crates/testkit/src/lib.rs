//! The test harness. Every test gets its own Postgres database (on the private
//! server `script/test` starts), its own `nats-server` process and, when it asks,
//! its own FreeRADIUS; then it starts the services it needs in-process on a free
//! port and talks to them over real HTTP.

pub mod fixtures;
pub mod freeradius;
pub mod nats;
pub mod pg;
pub mod projection;

use std::sync::Arc;
use std::time::Duration;

use isp_platform::auth::Keys;
use isp_platform::config::PlatformConfig;
use isp_platform::runtime::{self, Shared};
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
    admin_pool: tokio::sync::OnceCell<sqlx::PgPool>,
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
    /// The `doc.id` of a create or update answer (panics with the answer if absent).
    pub fn id(&self) -> String {
        self.body["doc"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no doc.id in {:?} {:?}", self.status, self.body))
            .to_string()
    }

    /// Asserts the status, showing the body when it differs; returns self.
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "{:?}", self.body);
        self
    }

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
            admin_pool: tokio::sync::OnceCell::new(),
        }
    }

    pub fn ctx(&self, name: &str) -> Arc<ServiceContext> {
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("service {name} not started"))
    }

    /// A pool connected as the database superuser, for assertions on any schema
    /// (made once per app).
    pub async fn admin_pool(&self) -> sqlx::PgPool {
        self.admin_pool
            .get_or_init(|| async {
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&self.db.admin_url)
                    .await
                    .expect("admin pool")
            })
            .await
            .clone()
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
    /// POSTs `body` to `path`, asserts 201 and returns the new document's id.
    #[track_caller]
    pub fn create<'a>(
        &'a self,
        path: &'a str,
        token: &'a str,
        body: Value,
    ) -> impl std::future::Future<Output = String> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let r = self.post(path, token, body).await;
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "POST {path} (at {caller}): {:?}",
                r.body
            );
            r.id()
        }
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

    /// Runs one statement as the superuser (setting up a state the API would take
    /// long to reach, e.g. a due date in the past).
    pub async fn sql(&self, q: &str) {
        let pool = self.admin_pool().await;
        sqlx::query(q)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
    }

    /// The one value `q` selects, read as the superuser.
    pub async fn scalar<T>(&self, q: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        let pool = self.admin_pool().await;
        sqlx::query_scalar(q)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    /// Waits (15 s at most) until the count `q` selects is above zero, e.g. until
    /// a projection has a row.
    pub async fn wait_for(&self, q: &str) {
        let pool = self.admin_pool().await;
        let ok = eventually(15, || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar(q).fetch_one(&pool).await.ok()?;
                (n > 0).then_some(())
            }
        })
        .await;
        assert!(ok.is_some(), "never true: {q}");
    }

    /// Waits (15 s at most) until `q`, with `$1` bound to the uuid `id` and run
    /// in `service`'s own schema, selects `true`: e.g. until a projection has
    /// caught up with a change.
    pub async fn wait_true(&self, service: &str, q: &str, id: &str) {
        let pool = self.ctx(service).pool.clone();
        let id = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        let ok = eventually(15, || {
            let pool = pool.clone();
            async move {
                let v: Option<bool> = sqlx::query_scalar(q)
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
                (v == Some(true)).then_some(())
            }
        })
        .await;
        assert!(ok.is_some(), "{service} never saw {id}: {q}");
    }

    /// A private FreeRADIUS reading this app's `radius` schema.
    pub async fn freeradius(&self) -> freeradius::TestFreeRadius {
        freeradius::TestFreeRadius::start(freeradius::FreeRadiusParams::for_database(
            &self.db.host,
            self.db.port,
            &self.db.name,
        ))
        .await
        .expect("FreeRADIUS")
    }

    /// Rows of `event_type` in `service`'s outbox.
    pub async fn outbox_count(&self, service: &str, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE type = $1")
            .bind(event_type)
            .fetch_one(&self.ctx(service).pool)
            .await
            .expect("outbox count")
    }

    /// Publishes `payload` on JetStream as `source` would (same subject,
    /// `Nats-Msg-Id`); returns the event id.
    pub async fn publish<P: isp_events::EventPayload>(
        &self,
        source: &str,
        payload: &P,
    ) -> uuid::Uuid {
        let ev = isp_events::CloudEvent::new(source, payload).expect("event");
        self.publish_event(&P::nats_subject(), &ev).await;
        ev.id
    }

    /// Publishes an event exactly as given (e.g. one whose payload another
    /// version of the contract wrote).
    pub async fn publish_event(&self, subject: &str, ev: &isp_events::CloudEvent) {
        let js = isp_events::async_nats::jetstream::new(self.shared.nats.clone());
        isp_events::ensure_stream(&js).await.expect("stream");
        let mut headers = isp_events::async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", ev.id.to_string().as_str());
        js.publish_with_headers(
            subject.to_string(),
            headers,
            ev.to_json().expect("json").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("puback");
    }

    /// Waits until one of `service`'s consumers has applied (or deliberately
    /// ignored) event `id`.
    pub async fn processed(&self, service: &str, id: uuid::Uuid) {
        self.wait_processed(service, None, id).await
    }

    /// Waits until `service`'s consumer `durable` has applied (or deliberately
    /// ignored) event `id` (when several of its consumers see the event).
    pub async fn processed_by(&self, service: &str, durable: &str, id: uuid::Uuid) {
        self.wait_processed(service, Some(durable), id).await
    }

    async fn wait_processed(&self, service: &str, durable: Option<&str>, id: uuid::Uuid) {
        let pool = self.ctx(service).pool.clone();
        let ok = eventually(15, || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM processed_events
                                    WHERE event_id = $2 AND ($1::text IS NULL OR consumer = $1))",
                )
                .bind(durable)
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()?
                .then_some(())
            }
        })
        .await;
        assert!(
            ok.is_some(),
            "{service} ({durable:?}) never processed event {id}"
        );
    }

    /// The last event on `subject` in the ISP stream, once it is about `entity`.
    pub async fn last_event(&self, subject: &str, entity: &str) -> Value {
        let js = isp_events::async_nats::jetstream::new(self.shared.nats.clone());
        eventually(10, || async {
            let stream = js.get_stream(isp_events::STREAM_NAME).await.ok()?;
            let msg = stream.get_last_raw_message_by_subject(subject).await.ok()?;
            let ev: Value = serde_json::from_slice(&msg.payload).ok()?;
            (ev["subject"] == json!(entity)).then_some(ev)
        })
        .await
        .unwrap_or_else(|| panic!("{subject} for {entity} on the ISP stream"))
    }

    /// A token for a service with `scopes`, signed by the platform key.
    pub fn service_token(&self, service: &str, scopes: &[&str]) -> String {
        self.shared
            .keys
            .service_token(service, scopes)
            .expect("service token")
    }
}

/// `(INFO, start)` of a service library, for [`TestApp::spawn`]:
/// `TestApp::spawn(&[service!(svc_core), service!(svc_crm)])`.
#[macro_export]
macro_rules! service {
    ($svc:ident) => {
        (
            $svc::INFO,
            (|c| Box::pin($svc::start(c))) as $crate::StartFn,
        )
    };
}

pub use isp_platform::runtime::{ServiceInfo, StartFn};

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
