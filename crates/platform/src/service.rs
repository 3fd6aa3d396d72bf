//! One way to assemble a service: its migrations, collections, custom routes (with
//! their OpenAPI operations, registered together through utoipa-axum so a route
//! cannot go undocumented or be documented at another path), consumers and the
//! endpoints every service has.
//!
//! ```ignore
//! pub async fn start_with(ctx: Arc<ServiceContext>, options: Options) -> anyhow::Result<Router> {
//!     let svc = Service::new(ctx, &MIGRATOR, "ISP CRM & Sales").await?;
//!     let colls = Collections::new();
//!     Ok(svc
//!         .with(State { colls: colls.clone(), options })
//!         .collection(&colls.buildings)
//!         .collection(&colls.leads)
//!         .routes(leads::routes())
//!         .consume("crm-core", "isp.core.>", consumers::CoreEvents)
//!         .router())
//! }
//! ```
//!
//! Custom handlers take `State<App<T>>`: the service context plus the service's own
//! state `T` (its collections, its settings), one per service. `App<T>` gives the
//! `Principal` extractor its keys, so no route needs a state struct of its own.

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::FromRef;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{HasKeys, Keys};
use crate::collection::{self, Collection};
use crate::ServiceContext;

/// The settings of a service that has none of its own yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOptions;

impl NoOptions {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(NoOptions)
    }
}

/// The state of a service's custom routes: its context and its own state `T`.
pub struct App<T = ()> {
    pub ctx: Arc<ServiceContext>,
    state: Arc<T>,
}

impl<T> Clone for App<T> {
    fn clone(&self) -> Self {
        App {
            ctx: self.ctx.clone(),
            state: self.state.clone(),
        }
    }
}

impl<T> Deref for App<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.state
    }
}

impl<T> HasKeys for App<T> {
    fn keys(&self) -> &Keys {
        &self.ctx.keys
    }
}

impl<T> FromRef<App<T>> for Arc<ServiceContext> {
    fn from_ref(app: &App<T>) -> Self {
        app.ctx.clone()
    }
}

/// A service being assembled; [`Service::router`] finishes it.
pub struct Service<T = ()> {
    app: App<T>,
    title: String,
    collections: Vec<Arc<Collection>>,
    api: OpenApiRouter<App<T>>,
    plain: Router,
    plain_docs: Vec<utoipa::openapi::OpenApi>,
}

impl Service<()> {
    /// Applies the service's migrations (with the shared event tables) and starts
    /// its outbox relay and staff-access projection: everything later may rely on
    /// the schema.
    pub async fn new(
        ctx: Arc<ServiceContext>,
        migrator: &sqlx::migrate::Migrator,
        title: impl Into<String>,
    ) -> anyhow::Result<Self> {
        ctx.migrate_and_relay(migrator).await?;
        Ok(Service {
            app: App {
                ctx,
                state: Arc::new(()),
            },
            title: title.into(),
            collections: vec![],
            api: OpenApiRouter::new(),
            plain: Router::new(),
            plain_docs: vec![],
        })
    }

    /// The service's own state, handed to its custom routes as `State<App<T>>`.
    pub fn with<T: Send + Sync + 'static>(self, state: T) -> Service<T> {
        let api = self.api.with_state(self.app.clone());
        Service {
            app: App {
                ctx: self.app.ctx,
                state: Arc::new(state),
            },
            title: self.title,
            collections: self.collections,
            api,
            plain: self.plain,
            plain_docs: self.plain_docs,
        }
    }
}

impl<T: Send + Sync + 'static> Service<T> {
    pub fn ctx(&self) -> &Arc<ServiceContext> {
        &self.app.ctx
    }

    /// Serves and documents a collection (the operations it leaves to the engine).
    pub fn collection(mut self, c: &Arc<Collection>) -> Self {
        self.collections.push(c.clone());
        self
    }

    /// Custom routes with their OpenAPI operations:
    /// `OpenApiRouter::new().routes(routes!(convert))`.
    pub fn routes(mut self, routes: OpenApiRouter<App<T>>) -> Self {
        self.api = self.api.merge(routes);
        self
    }

    /// Routes built as a plain axum `Router` with their document: for routes not
    /// yet registered through utoipa-axum (prefer [`Service::routes`], which cannot
    /// document a path it does not serve).
    pub fn merge(mut self, routes: Router, doc: utoipa::openapi::OpenApi) -> Self {
        self.plain = self.plain.merge(routes);
        self.plain_docs.push(doc);
        self
    }

    /// Starts a durable JetStream consumer of this service.
    pub fn consume<H: isp_events::EventHandler>(
        self,
        durable: &str,
        filter: &str,
        handler: H,
    ) -> Self {
        self.app.ctx.consume(durable, filter, handler);
        self
    }

    /// A consumer described in full, e.g. applying several events at once.
    pub fn consume_spec<H: isp_events::EventHandler>(
        self,
        spec: isp_events::ConsumerSpec,
        handler: H,
    ) -> Self {
        self.app.ctx.consume_spec(spec, handler);
        self
    }

    /// The finished router: collections, custom routes, health, readiness,
    /// metrics, the events its consumers are failing on, the OpenAPI document and
    /// Swagger UI.
    pub fn router(mut self) -> Router {
        let ctx = self.app.ctx.clone();
        let failing = Arc::new(crate::failing::collection(ctx.name));
        self.collections.push(failing.clone());
        let (skip, skip_doc) = crate::failing::routes(ctx.clone(), failing);
        self.plain = self.plain.merge(skip);
        self.plain_docs.push(skip_doc);
        let refs: Vec<&Collection> = self.collections.iter().map(|c| c.as_ref()).collect();
        let mut doc = crate::openapi::collections_doc(ctx.name, &self.title, &refs);
        let (custom, custom_doc) = self.api.with_state(self.app).split_for_parts();
        doc.merge(custom_doc);
        for d in self.plain_docs {
            doc.merge(d);
        }
        let mut routes = custom.merge(self.plain);
        for c in &self.collections {
            routes = routes.merge(collection::routes(c.clone(), ctx.clone()));
        }
        crate::http::service_router(ctx, routes, doc)
    }
}
