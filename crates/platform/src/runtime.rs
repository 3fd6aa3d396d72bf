//! Starting a service: alone (its own binary, its own port) or as one of the fleet
//! in the launcher. Both paths build the same [`ServiceContext`] and call the same
//! service `start` function, so the two deployment modes cannot drift apart.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::auth::Keys;
use crate::config::{service_addr, PlatformConfig};
use crate::db::{self, ReaderRole, ServiceDb};
use crate::staff_access::StaffAccess;
use crate::ServiceContext;

/// What the platform needs to know about a service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    /// URL prefix and event source: `core`, `wa-parser`.
    pub name: &'static str,
    /// Postgres schema (and role `isp_<schema>`).
    pub schema: &'static str,
    /// Further schemas the service owns (NOC owns `radius`).
    pub extra_schemas: &'static [&'static str],
    /// Standalone port in docs/contract.md#services.
    pub port: u16,
    /// Scopes of the service token this service calls others with.
    pub scopes: &'static [&'static str],
}

impl ServiceInfo {
    pub fn db(&self) -> ServiceDb {
        let mut d = ServiceDb::for_service(self.schema);
        for s in self.extra_schemas {
            d = d.with_schema(s);
        }
        d
    }
}

/// FreeRADIUS reads the NOC's `radius` schema with its own, read-mostly role.
pub fn radius_reader() -> ReaderRole {
    ReaderRole {
        role: "isp_radius".into(),
        password: crate::config::env_or("ISP_RADIUS_DATABASE_PASSWORD", "isp_radius"),
        schema: "radius".into(),
    }
}

/// Process-wide pieces shared by every service in the process.
#[derive(Clone)]
pub struct Shared {
    pub config: PlatformConfig,
    pub keys: Keys,
    pub nats: async_nats::Client,
    pub shutdown: CancellationToken,
}

impl Shared {
    pub async fn from_env(shutdown: CancellationToken) -> anyhow::Result<Self> {
        let config = PlatformConfig::from_env()?;
        let keys = Keys::load_or_create(&config.data_dir)?;
        let nats = isp_events::connect_nats(&config.nats_url).await?;
        Ok(Self {
            config,
            keys,
            nats,
            shutdown,
        })
    }
}

/// Provisions the role and schema (when an admin URL is configured) and connects.
pub async fn context(info: ServiceInfo, shared: &Shared) -> anyhow::Result<Arc<ServiceContext>> {
    let db = info.db();
    if let Some(admin) = &shared.config.database_admin_url {
        let readers = if info.extra_schemas.contains(&"radius") {
            vec![radius_reader()]
        } else {
            vec![]
        };
        db::provision(admin, std::slice::from_ref(&db), &readers).await?;
    }
    let pool = db::connect(&shared.config, &db).await?;
    // Staff tokens are checked against this service's own `staff_access`.
    // Service tokens must be addressed to this service.
    let keys = shared
        .keys
        .clone()
        .with_audience(info.name)
        .with_staff_access(
            StaffAccess::for_service(info.name, pool.clone())
                .with_core(&shared.config.internal_url),
        );
    Ok(Arc::new(ServiceContext {
        name: info.name,
        schema: info.schema,
        pool,
        keys,
        config: shared.config.clone(),
        nats: Some(shared.nats.clone()),
        shutdown: shared.shutdown.clone(),
    }))
}

impl ServiceContext {
    pub fn bus(&self) -> Option<isp_events::Bus> {
        self.nats.clone().map(isp_events::Bus::from_client)
    }

    /// Runs this service's migrations (with the shared event tables), starts its
    /// outbox relay and, except at the staff owner (core), the consumer that keeps
    /// its `staff_access` projection current (see [`crate::staff_access`]).
    pub async fn migrate_and_relay(
        &self,
        migrator: &sqlx::migrate::Migrator,
    ) -> anyhow::Result<()> {
        isp_events::migrate(&self.pool, migrator).await?;
        if let Some(bus) = self.bus() {
            isp_events::spawn_relay(self.pool.clone(), bus.js.clone(), self.shutdown.clone());
        }
        let owner = self
            .keys
            .staff_access()
            .is_some_and(StaffAccess::is_authoritative);
        if !owner {
            self.consume(
                &crate::staff_access::consumer_name(self.name),
                crate::staff_access::FILTER,
                crate::staff_access::StaffAccessProjection,
            );
        }
        Ok(())
    }

    /// Starts a durable consumer for this service (one event at a time).
    pub fn consume<H: isp_events::EventHandler>(&self, durable: &str, filter: &str, handler: H) {
        self.consume_spec(isp_events::ConsumerSpec::new(durable, filter), handler);
    }

    /// Starts a durable consumer described in full (e.g. with several lanes).
    pub fn consume_spec<H: isp_events::EventHandler>(
        &self,
        spec: isp_events::ConsumerSpec,
        handler: H,
    ) {
        if let Some(bus) = self.bus() {
            isp_events::spawn_consumer(
                self.pool.clone(),
                bus.js,
                spec,
                handler,
                self.shutdown.clone(),
            );
        }
    }

    /// A client for calling another service with this service's token:
    /// `ISP_<SCHEMA>_SERVICE_TOKEN`, else the file `ISP_<SCHEMA>_SERVICE_TOKEN_FILE`
    /// (written by `isp init` in a distributed deployment), else one minted with
    /// the signing key (single process). Either way the token is renewed before it
    /// expires (see [`crate::client::TokenSource`]).
    pub fn client(&self, scopes: &[&str]) -> anyhow::Result<crate::client::ServiceClient> {
        use crate::client::TokenOrigin;
        let var = format!("ISP_{}_SERVICE_TOKEN", self.schema.to_uppercase());
        let origin = match crate::config::env_opt(&var) {
            Some(t) => TokenOrigin::Fixed(t.trim().to_string()),
            None => match crate::config::env_opt(&format!("{var}_FILE")) {
                Some(f) => TokenOrigin::File(f.into()),
                None => {
                    anyhow::ensure!(
                        self.keys.can_sign(),
                        "{var} or {var}_FILE is needed: this process cannot sign tokens"
                    );
                    TokenOrigin::Mint {
                        keys: self.keys.clone(),
                        service: self.name.to_string(),
                        scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    }
                }
            },
        };
        let base = self.config.internal_url.clone();
        if let TokenOrigin::Mint { .. } = origin {
            // Minting is local and cheap: a fresh source per client.
            let source = crate::client::TokenSource::new(origin, base.clone());
            return Ok(crate::client::ServiceClient::new(base, source));
        }
        // A token given to the process: one source per service for the whole
        // process, so a renewed token is kept (clients are often made per request)
        // and one background task keeps it alive.
        static SOURCES: std::sync::LazyLock<
            std::sync::Mutex<std::collections::HashMap<String, crate::client::TokenSource>>,
        > = std::sync::LazyLock::new(Default::default);
        let key = format!("{}|{}", self.name, base);
        let source = {
            let mut sources = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
            sources
                .entry(key)
                .or_insert_with(|| {
                    let s = crate::client::TokenSource::new(origin, base.clone());
                    s.keep_fresh(self.shutdown.clone());
                    s
                })
                .clone()
        };
        Ok(crate::client::ServiceClient::new(
            self.config.internal_url.clone(),
            source,
        ))
    }
}

/// `main` of a standalone service binary.
pub async fn run_standalone<F, Fut>(info: ServiceInfo, start: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<ServiceContext>) -> Fut,
    Fut: Future<Output = anyhow::Result<Router>>,
{
    crate::telemetry::init();
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        crate::telemetry::shutdown_signal().await;
        s.cancel();
    });
    let shared = Shared::from_env(shutdown.clone()).await?;
    let ctx = context(info, &shared).await?;
    let router = start(ctx).await?;
    let addr = service_addr(info.name, info.port)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(service = info.name, %addr, "listening");
    crate::http::serve(listener, router, shutdown).await
}

/// No migrations of its own: a service that so far has only the event tables.
pub static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    migrations: std::borrow::Cow::Borrowed(&[]),
    ignore_missing: true,
    locking: true,
    no_tx: false,
};

/// Start of a service that has no collections yet: event tables, relay, health,
/// readiness, metrics and an (empty) OpenAPI document. Same as
/// `Service::new(ctx, &NO_MIGRATIONS, title).await?.router()`.
pub async fn start_bare(ctx: Arc<ServiceContext>, title: &str) -> anyhow::Result<Router> {
    Ok(crate::service::Service::new(ctx, &NO_MIGRATIONS, title)
        .await?
        .router())
}

/// A service's `start`, boxed so a fleet of different services can be listed.
/// Not `Send`: services start one after another on the caller's task.
pub type StartFn =
    fn(Arc<ServiceContext>) -> futures::future::LocalBoxFuture<'static, anyhow::Result<Router>>;
