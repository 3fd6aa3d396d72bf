//! Payload-style collections.
//!
//! A [`Collection`] is a table described field by field: its API name, column, kind,
//! whether it is required, and which roles may read and write it. From that one
//! description the engine serves `GET/POST /api/<svc>/<slug>` and
//! `GET/PATCH/DELETE /api/<svc>/<slug>/<id>` with Payload's list queries, input
//! validation that names the field, field-level read/write access, row scopes, and
//! [`Hooks`] that run inside the write's transaction (so a hook's outbox event
//! commits or rolls back with the row).
//!
//! Documents leave Postgres already shaped as JSON (`jsonb_build_object`), with money
//! as exact decimal strings; fields a role may not read are removed before the
//! document is sent, and may not be filtered or sorted on either (a filter on
//! `accountBalance` would otherwise reveal it).
//!
//! The engine is split along its seams: [`field`] (kinds and canonical values),
//! [`hooks`], [`access`] (roles, scopes, field limits), [`validate`] (bodies into
//! data), [`store`] (SQL for one document), [`list`] (Payload list queries),
//! [`handlers`] (HTTP) and [`events`] (snapshot events).

use std::sync::Arc;

use crate::auth::Roles;

mod access;
mod events;
mod field;
mod handlers;
mod hooks;
mod list;
mod store;
pub mod stored;
mod validate;

pub use events::{publish_change, publish_doc};
pub use field::{canonical, contains_nul, Field, Kind, NUL_MESSAGE};
pub use handlers::{parse_body, parse_id, routes};
pub use hooks::{Change, Hooks, NoHooks, Scope};
pub use list::op_supported;
pub use store::SqlValue;

use events::{SnapshotEvents, Snapshots};

pub struct Collection {
    pub slug: &'static str,
    pub table: &'static str,
    /// "Plan", used in messages.
    pub label: &'static str,
    pub fields: Vec<Field>,
    pub read: Roles,
    pub create: Roles,
    pub update: Roles,
    pub delete: Roles,
    pub hooks: Arc<dyn Hooks>,
    /// Snapshot events published through the outbox on every change and delete
    /// (see [`Collection::publishes`]).
    events: Option<Arc<dyn SnapshotEvents>>,
    /// Prefix of service scopes: `<service>.<slug>`; a service token with scope
    /// `<prefix>.read|create|update|delete` may do that.
    scope_prefix: String,
    select_sql: String,
    /// How each CRUD operation is served (see [`Serve`]).
    serve: [Serve; 4],
    /// `POST` honours `Idempotency-Key` (see [`Collection::idempotent_create`]).
    idempotent_create: bool,
    /// Operations beyond CRUD that custom routes authorize through the collection
    /// ([`Operation::Action`]): name and roles.
    actions: Vec<(&'static str, Roles)>,
    /// What the collection's hooks check on create and update that no schema can
    /// say (see [`Collection::rule`]).
    rules: Vec<String>,
}

/// How the engine serves one CRUD operation of a collection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Serve {
    /// The generic handler.
    Engine,
    /// A custom route of the service, with its own OpenAPI operation; the engine
    /// neither routes nor documents it.
    Custom,
    /// Refused with 403 and this message (subscribers are deactivated, not deleted).
    Off(&'static str),
    /// No role may do it (a log only the service itself writes): neither routed
    /// (HTTP answers 405 with the methods that are) nor documented. Services that
    /// must write such a collection do it in their own code, not over HTTP.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operation {
    Read,
    Create,
    Update,
    Delete,
    /// An operation of a custom route, declared with [`Collection::action`]
    /// (`convert` a lead, `allocate` a payment); its scope is `<prefix>.<name>`.
    Action(&'static str),
}

impl Operation {
    pub const CRUD: [Operation; 4] = [
        Operation::Read,
        Operation::Create,
        Operation::Update,
        Operation::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Action(name) => name,
        }
    }

    fn index(self) -> Option<usize> {
        Operation::CRUD.iter().position(|o| *o == self)
    }
}

impl Collection {
    pub fn new(
        service: &str,
        slug: &'static str,
        table: &'static str,
        label: &'static str,
        fields: Vec<Field>,
    ) -> Self {
        let mut c = Collection {
            slug,
            table,
            label,
            fields,
            read: Roles::of(&[crate::auth::Role::Admin]),
            create: Roles::of(&[crate::auth::Role::Admin]),
            update: Roles::of(&[crate::auth::Role::Admin]),
            delete: Roles::of(&[crate::auth::Role::Admin]),
            hooks: Arc::new(NoHooks),
            events: None,
            scope_prefix: format!("{service}.{slug}"),
            select_sql: String::new(),
            serve: [Serve::Engine; 4],
            idempotent_create: false,
            actions: vec![],
            rules: vec![],
        };
        c.select_sql = c.build_select();
        c
    }
    pub fn access(mut self, read: Roles, create: Roles, update: Roles, delete: Roles) -> Self {
        self.read = read;
        self.create = create;
        self.update = update;
        self.delete = delete;
        self
    }
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks = Arc::new(hooks);
        self
    }
    /// Publishes the stored document as `created`/`updated` after each create and
    /// update, and the last one as `deleted` after a delete, in the write's
    /// transaction (after the hooks): other services keep projections from them.
    pub fn publishes<S, C, U, D>(
        mut self,
        created: fn(S) -> C,
        updated: fn(S) -> U,
        deleted: fn(S) -> D,
    ) -> Self
    where
        S: serde::de::DeserializeOwned + Send + Sync + 'static,
        C: isp_events::EventPayload + Send + Sync + 'static,
        U: isp_events::EventPayload + Send + Sync + 'static,
        D: isp_events::EventPayload + Send + Sync + 'static,
    {
        self.events = Some(Arc::new(Snapshots {
            created,
            updated,
            deleted,
        }));
        self
    }

    /// `POST` honours `Idempotency-Key`: the key, a hash of the body and the answer
    /// are stored in the create's transaction, so a retry (wa-parser creating a
    /// lead, CRM converting one) gets the first answer and creates nothing.
    pub fn idempotent_create(mut self) -> Self {
        self.idempotent_create = true;
        self
    }
    /// The service serves `op` with a custom route (documented by that route).
    pub fn custom(mut self, op: Operation) -> Self {
        self.set_serve(op, Serve::Custom);
        self
    }
    /// `op` is refused with 403 and `message`, for every role.
    pub fn off(mut self, op: Operation, message: &'static str) -> Self {
        self.set_serve(op, Serve::Off(message));
        self
    }
    /// Declares a custom operation `name` the given roles may do (and services
    /// whose token has scope `<service>.<slug>.<name>`).
    pub fn action(mut self, name: &'static str, roles: Roles) -> Self {
        self.actions.push((name, roles));
        self
    }
    /// A rule the hooks check on create and update that JSON Schema cannot state
    /// (a template's variables, which depend on another field): documented as the
    /// operations' `x-rules`, where a schema-valid body may be refused with a 400
    /// naming the field. Say the rule as `field: what it must be`.
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rules.push(rule.into());
        self
    }
    /// The collection's [`Collection::rule`]s.
    pub fn rules(&self) -> &[String] {
        &self.rules
    }
    fn set_serve(&mut self, op: Operation, serve: Serve) {
        let i = op
            .index()
            .expect("only read, create, update and delete are served by the engine");
        self.serve[i] = serve;
    }
    /// How the engine serves a CRUD operation.
    pub fn serves(&self, op: Operation) -> Serve {
        match op.index().map_or(Serve::Custom, |i| self.serve[i]) {
            Serve::Engine if self.roles(op) == Roles::NONE => Serve::Closed,
            s => s,
        }
    }
    /// Whether the engine answers `op` over HTTP (itself or with its refusal).
    pub fn routes_op(&self, op: Operation) -> bool {
        matches!(self.serves(op), Serve::Engine | Serve::Off(_))
    }
    pub fn is_idempotent_create(&self) -> bool {
        self.idempotent_create
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}
