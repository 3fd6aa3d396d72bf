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
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operation {
    Read,
    Create,
    Update,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
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

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}
