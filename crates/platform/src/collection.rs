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

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::auth::{Principal, Roles};
use crate::error::{field_from_table_constraint, ApiError, ApiResult, FieldError};
use crate::query::{Filter, ListQuery, Op, Page};
use crate::ServiceContext;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Text, Text Area and Rich Text (Markdown) all store text; `max` bounds length.
    Text {
        max: usize,
    },
    Email,
    /// Normalized to E.164.
    Phone,
    Int {
        min: i64,
        max: i64,
    },
    /// KES, numeric(14,2), exact.
    Money,
    Bool,
    Date,
    Timestamp,
    Select(&'static [&'static str]),
    /// A uuid naming a document (possibly in another service).
    Relation,
    /// uuid[]
    Relations,
    /// `[longitude, latitude]`, stored as jsonb.
    Point,
    /// Free-form JSON (arrays of line items...), validated by hooks.
    Json,
    /// Write-only secret: accepted untrimmed (min 8 chars), never selected or
    /// returned; a hook must replace it (e.g. with an argon2 hash) before storage.
    Password,
}

impl Kind {
    pub const TEXT: Kind = Kind::Text { max: 500 };
    pub const TEXT_AREA: Kind = Kind::Text { max: 20_000 };
    pub const RICH_TEXT: Kind = Kind::Text { max: 100_000 };
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: &'static str,
    pub column: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// None: the collection's read roles.
    pub read: Option<Roles>,
    /// None: the collection's create/update roles.
    pub write: Option<Roles>,
    /// Managed by the system (hooks, events); no one writes it through the API.
    pub system: bool,
    /// Never leaves the service (password hashes).
    pub hidden: bool,
    /// May be set on create but not changed afterwards.
    pub immutable: bool,
    /// Payload's `defaultValue`: filled in on create when the client leaves the
    /// field out (or sends null), before hooks and the required check.
    pub default: Option<Value>,
    /// What the OpenAPI documents say a client may send for this field, where a
    /// collection's rules accept less than the kind does (a CIDR network, money
    /// above zero): JSON Schema keywords that replace the kind's.
    pub schema: Option<Value>,
}

impl Field {
    pub fn new(name: &'static str, column: &'static str, kind: Kind) -> Self {
        Field {
            name,
            column,
            kind,
            required: false,
            read: None,
            write: None,
            system: false,
            hidden: false,
            immutable: false,
            default: None,
            schema: None,
        }
    }
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
    pub fn read(mut self, roles: Roles) -> Self {
        self.read = Some(roles);
        self
    }
    pub fn write(mut self, roles: Roles) -> Self {
        self.write = Some(roles);
        self
    }
    pub fn system(mut self) -> Self {
        self.system = true;
        self
    }
    pub fn hidden(mut self) -> Self {
        self.hidden = true;
        self.system = true;
        self
    }
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }
    /// The spec's `defaultValue` (any form [`canonical`] accepts for the kind).
    /// Documents the collection's own rule for this field (see [`Field::schema`]):
    /// the keywords given replace the kind's in create and update bodies.
    pub fn schema(mut self, keywords: Value) -> Self {
        self.schema = Some(keywords);
        self
    }
    pub fn default_value(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
    }
}

/// Which rows of a collection a principal may see.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    /// Only rows whose `column` equals the value.
    Eq(&'static str, SqlValue),
}

/// What a write hook sees.
pub struct Change<'a> {
    pub ctx: &'a ServiceContext,
    pub principal: &'a Principal,
    pub create: bool,
    /// Canonical JSON of the fields being written, keyed by API name. Hooks may
    /// change values and add system fields.
    pub data: &'a mut Map<String, Value>,
    /// The document before an update.
    pub existing: Option<&'a Value>,
}

impl Change<'_> {
    /// The value after the write: the new one if given, else the stored one.
    pub fn value(&self, field: &str) -> Option<&Value> {
        match self.data.get(field) {
            Some(v) => Some(v),
            None => self.existing.and_then(|e| e.get(field)),
        }
        .filter(|v| !v.is_null())
    }
    pub fn str(&self, field: &str) -> Option<&str> {
        self.value(field).and_then(Value::as_str)
    }
    pub fn uuid(&self, field: &str) -> Option<Uuid> {
        self.str(field).and_then(|s| Uuid::parse_str(s).ok())
    }
    pub fn changed(&self, field: &str) -> bool {
        match (
            self.data.get(field),
            self.existing.and_then(|e| e.get(field)),
        ) {
            (Some(new), Some(old)) => new != old,
            (Some(new), None) => !new.is_null(),
            (None, _) => false,
        }
    }
}

#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    fn scope(&self, _principal: &Principal) -> Scope {
        Scope::All
    }
    /// Validate across fields, normalize, derive system fields. Runs inside the
    /// transaction, after per-field validation.
    async fn before_change(
        &self,
        _tx: &mut PgConnection,
        _change: &mut Change<'_>,
    ) -> ApiResult<()> {
        Ok(())
    }
    /// Runs inside the transaction with the stored document: write outbox events here.
    async fn after_change(
        &self,
        _tx: &mut PgConnection,
        _ctx: &ServiceContext,
        _principal: &Principal,
        _doc: &Value,
        _previous: Option<&Value>,
    ) -> ApiResult<()> {
        Ok(())
    }
    async fn before_delete(
        &self,
        _tx: &mut PgConnection,
        _principal: &Principal,
        _doc: &Value,
    ) -> ApiResult<()> {
        Ok(())
    }
    async fn after_delete(
        &self,
        _tx: &mut PgConnection,
        _ctx: &ServiceContext,
        _doc: &Value,
    ) -> ApiResult<()> {
        Ok(())
    }
    /// Runs first in an update's or a delete's transaction, before the document's
    /// row is locked. Locks that other writers take before this row belong here, so
    /// that every writer takes them in one order (a lock taken later, in
    /// `before_change`, could deadlock against them).
    async fn before_lock(
        &self,
        _tx: &mut PgConnection,
        _op: Operation,
        _id: Uuid,
    ) -> ApiResult<()> {
        Ok(())
    }
    /// Runs once a create, update or delete has committed, with the stored
    /// document (for a delete, the last one): effects outside the database that
    /// must not happen for a rolled-back write, such as removing a stored file. It
    /// cannot fail the request, which has already succeeded.
    async fn after_commit(&self, _op: Operation, _doc: &Value) {}
    /// Last look at a document before it is sent (after field access is applied).
    fn present(&self, _principal: &Principal, _doc: &mut Map<String, Value>) {}
}

pub struct NoHooks;
impl Hooks for NoHooks {}

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

    pub fn allowed(&self, p: &Principal, op: Operation) -> bool {
        let roles = match op {
            Operation::Read => self.read,
            Operation::Create => self.create,
            Operation::Update => self.update,
            Operation::Delete => self.delete,
        };
        p.in_roles(roles) || p.has_scope(&format!("{}.{}", self.scope_prefix, op.as_str()))
    }

    fn check(&self, p: &Principal, op: Operation) -> ApiResult<()> {
        if self.allowed(p, op) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "You are not allowed to {} {}.",
                op.as_str(),
                self.slug
            )))
        }
    }

    pub fn can_read_field(&self, p: &Principal, f: &Field) -> bool {
        if f.hidden || f.kind == Kind::Password {
            return false;
        }
        match (p, f.read) {
            // A field kept from some roles (a NAS secret, a balance) is kept from
            // services too, unless their token names it: `<prefix>.<field>.read`.
            (Principal::Service { .. }, Some(_)) => {
                p.has_scope(&format!("{}.{}.read", self.scope_prefix, f.name))
            }
            (Principal::Service { .. }, None) => true,
            (Principal::Staff { role, .. }, _) => f.read.unwrap_or(self.read).contains(*role),
        }
    }

    fn can_write_field(&self, p: &Principal, f: &Field, create: bool) -> bool {
        if f.system || (!create && f.immutable) {
            return false;
        }
        match p {
            // As for reads: a field kept from some roles (a subscriber's status, a
            // work order's assignee) is kept from services too, unless their token
            // names it: `<prefix>.<field>.write`.
            Principal::Service { .. } => {
                f.write.is_none()
                    || p.has_scope(&format!("{}.{}.write", self.scope_prefix, f.name))
            }
            Principal::Staff { role, .. } => f
                .write
                .unwrap_or(if create { self.create } else { self.update })
                .contains(*role),
        }
    }

    /// `SELECT <doc json> FROM <table> t`: the whole document (hidden fields excluded).
    fn build_select(&self) -> String {
        let mut pairs = vec![
            "'id', t.id".to_string(),
            "'createdAt', to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')".to_string(),
            "'updatedAt', to_char(t.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')".to_string(),
        ];
        for f in self
            .fields
            .iter()
            .filter(|f| !f.hidden && f.kind != Kind::Password)
        {
            let expr = match f.kind {
                Kind::Money => format!("to_char(t.{0}, 'FM999999999990.00')", f.column),
                Kind::Timestamp => format!(
                    "to_char(t.{0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                    f.column
                ),
                _ => format!("t.{}", f.column),
            };
            pairs.push(format!("'{}', {}", f.name, expr));
        }
        // jsonb_build_object takes at most 100 arguments: concatenate chunks.
        let objects: Vec<String> = pairs
            .chunks(40)
            .map(|c| format!("jsonb_build_object({})", c.join(", ")))
            .collect();
        format!(
            "SELECT ({})::text AS doc FROM {} t",
            objects.join(" || "),
            self.table
        )
    }

    /// Fetches one document by id (no access checks), optionally locking the row.
    pub async fn fetch(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        lock: bool,
    ) -> ApiResult<Option<Value>> {
        let sql = format!(
            "{} WHERE t.id = $1{}",
            self.select_sql,
            if lock { " FOR UPDATE" } else { "" }
        );
        let row: Option<String> = sqlx::query_scalar(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|s| serde_json::from_str(&s).map_err(|e| ApiError::Internal(e.into())))
            .transpose()
    }

    /// The document as `principal` may see it.
    pub fn present(&self, principal: &Principal, doc: &Value) -> Value {
        let mut out = Map::new();
        if let Value::Object(m) = doc {
            for (k, v) in m {
                let visible = match self.field(k) {
                    Some(f) => self.can_read_field(principal, f),
                    None => true, // id, createdAt, updatedAt
                };
                if visible {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        self.hooks.present(principal, &mut out);
        Value::Object(out)
    }

    fn column_for(
        &self,
        principal: &Principal,
        name: &str,
        path: &str,
    ) -> ApiResult<(&'static str, Kind)> {
        match name {
            "id" => return Ok(("id", Kind::Relation)),
            "createdAt" => return Ok(("created_at", Kind::Timestamp)),
            "updatedAt" => return Ok(("updated_at", Kind::Timestamp)),
            _ => {}
        }
        match self.field(name) {
            Some(f) if self.can_read_field(principal, f) => Ok((f.column, f.kind)),
            _ => Err(ApiError::field(path, format!("Unknown field {name:?}."))),
        }
    }

    fn push_scope(&self, qb: &mut QueryBuilder<'_, Postgres>, principal: &Principal) {
        match self.hooks.scope(principal) {
            Scope::All => {}
            Scope::Eq(col, v) => {
                qb.push(format!(" AND t.{col} = "));
                v.push(qb);
            }
        }
    }

    fn push_filter(
        &self,
        qb: &mut QueryBuilder<'_, Postgres>,
        principal: &Principal,
        f: &Filter,
    ) -> ApiResult<()> {
        let path = format!("where.{}", f.field);
        let (col, kind) = self.column_for(principal, &f.field, &path)?;
        if f.value.contains('\0') {
            return Err(ApiError::field(&path, NUL_MESSAGE));
        }
        if !op_supported(kind, f.op) {
            return Err(ApiError::field(
                &path,
                format!(
                    "The {} operator does not apply to {}.",
                    op_name(f.op),
                    f.field
                ),
            ));
        }
        let c = format!("t.{col}");
        let one = |s: &str| parse_filter_value(kind, s).map_err(|m| ApiError::field(&path, m));
        match f.op {
            Op::Exists => {
                let yes = match f.value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(ApiError::field(&path, "exists takes true or false.")),
                };
                qb.push(format!(" AND {c} IS {}NULL", if yes { "NOT " } else { "" }));
            }
            Op::Like => {
                if !matches!(
                    kind,
                    Kind::Text { .. } | Kind::Email | Kind::Phone | Kind::Select(_)
                ) {
                    return Err(ApiError::field(&path, "like works on text fields only."));
                }
                let escaped = f
                    .value
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                qb.push(format!(" AND {c} ILIKE "));
                qb.push_bind(format!("%{escaped}%"));
            }
            Op::In | Op::NotIn => {
                let values = f
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(one)
                    .collect::<ApiResult<Vec<_>>>()?;
                let not = f.op == Op::NotIn;
                if kind == Kind::Relations {
                    qb.push(format!(" AND {}({c} && ", if not { "NOT " } else { "" }));
                } else {
                    qb.push(format!(" AND {}({c} = ANY(", if not { "NOT " } else { "" }));
                }
                SqlValue::array(kind, values).push(qb);
                qb.push(if kind == Kind::Relations { ")" } else { "))" });
            }
            _ => {
                let v = one(&f.value)?;
                if kind == Kind::Relations {
                    let neg = if f.op == Op::NotEquals { "NOT " } else { "" };
                    if !matches!(f.op, Op::Equals | Op::NotEquals) {
                        return Err(ApiError::field(
                            &path,
                            "Only equals, not_equals, in, not_in and exists apply here.",
                        ));
                    }
                    qb.push(format!(" AND {neg}("));
                    v.push(qb);
                    qb.push(format!(" = ANY({c}))"));
                    return Ok(());
                }
                let op = match f.op {
                    Op::Equals => "=",
                    Op::NotEquals => "IS DISTINCT FROM",
                    Op::GreaterThan => ">",
                    Op::GreaterThanEqual => ">=",
                    Op::LessThan => "<",
                    Op::LessThanEqual => "<=",
                    _ => unreachable!("handled above"),
                };
                if matches!(kind, Kind::Bool | Kind::Json | Kind::Point)
                    && !matches!(f.op, Op::Equals | Op::NotEquals)
                {
                    return Err(ApiError::field(
                        &path,
                        "This field can only be compared for equality.",
                    ));
                }
                qb.push(format!(" AND {c} {op} "));
                v.push(qb);
            }
        }
        Ok(())
    }

    fn push_where(
        &self,
        qb: &mut QueryBuilder<'_, Postgres>,
        principal: &Principal,
        q: &ListQuery,
    ) -> ApiResult<()> {
        qb.push(" WHERE TRUE");
        self.push_scope(qb, principal);
        for f in &q.filters {
            self.push_filter(qb, principal, f)?;
        }
        if !q.or_groups.is_empty() {
            qb.push(" AND (FALSE");
            for group in &q.or_groups {
                qb.push(" OR (TRUE");
                for f in group {
                    self.push_filter(qb, principal, f)?;
                }
                qb.push(")");
            }
            qb.push(")");
        }
        Ok(())
    }

    /// Lists documents as `principal` may see them.
    pub async fn list(
        &self,
        conn: &mut PgConnection,
        principal: &Principal,
        q: &ListQuery,
    ) -> ApiResult<Page<Value>> {
        let mut count = QueryBuilder::new(format!("SELECT count(*) FROM {} t", self.table));
        self.push_where(&mut count, principal, q)?;
        let total: i64 = count.build_query_scalar().fetch_one(&mut *conn).await?;

        let mut qb = QueryBuilder::new(self.select_sql.clone());
        self.push_where(&mut qb, principal, q)?;
        qb.push(" ORDER BY ");
        let sort = if q.sort.is_empty() {
            vec![("createdAt".to_string(), true)]
        } else {
            q.sort.clone()
        };
        for (name, desc) in &sort {
            let (col, _) = self.column_for(principal, name, "sort")?;
            qb.push(format!(
                "t.{col} {} NULLS LAST, ",
                if *desc { "DESC" } else { "ASC" }
            ));
        }
        qb.push("t.id ASC LIMIT ");
        qb.push_bind(q.limit);
        qb.push(" OFFSET ");
        qb.push_bind(q.offset());
        let rows: Vec<String> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
        let docs = rows
            .iter()
            .map(|s| serde_json::from_str::<Value>(s).map(|d| self.present(principal, &d)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::Internal(e.into()))?;
        Ok(Page::new(docs, total, q))
    }

    /// One document, if it exists and lies in the principal's scope.
    pub async fn find_scoped(
        &self,
        conn: &mut PgConnection,
        principal: &Principal,
        id: Uuid,
        lock: bool,
    ) -> ApiResult<Value> {
        let mut qb = QueryBuilder::new(self.select_sql.clone());
        qb.push(" WHERE t.id = ");
        qb.push_bind(id);
        self.push_scope(&mut qb, principal);
        if lock {
            qb.push(" FOR UPDATE");
        }
        let row: Option<String> = qb.build_query_scalar().fetch_optional(&mut *conn).await?;
        match row {
            Some(s) => serde_json::from_str(&s).map_err(|e| ApiError::Internal(e.into())),
            None => Err(ApiError::not_found(self.label)),
        }
    }

    /// Validates a create/update body into canonical JSON, checking field write access.
    pub fn validate_input(
        &self,
        principal: &Principal,
        body: &Value,
        create: bool,
    ) -> ApiResult<Map<String, Value>> {
        let Value::Object(input) = body else {
            return Err(ApiError::bad_request("The body must be a JSON object."));
        };
        let mut out = Map::new();
        let mut bad = vec![];
        let mut forbidden = vec![];
        for (k, v) in input {
            if matches!(k.as_str(), "id" | "createdAt" | "updatedAt") {
                continue; // Payload clients echo these back; they are never written.
            }
            let Some(f) = self.field(k) else {
                bad.push(FieldError::new(k, format!("Unknown field {k:?}.")));
                continue;
            };
            if !self.can_write_field(principal, f, create) {
                let msg = if f.system {
                    format!("{k} is read-only.")
                } else if !create && f.immutable {
                    format!("{k} cannot be changed once set.")
                } else {
                    format!("You are not allowed to change {k}.")
                };
                forbidden.push(FieldError::new(k, msg));
                continue;
            }
            match canonical(f, v) {
                Ok(c) => {
                    out.insert(k.clone(), c);
                }
                Err(m) => bad.push(FieldError::new(k, m)),
            }
        }
        if !forbidden.is_empty() {
            return Err(ApiError::Forbidden(forbidden));
        }
        if !bad.is_empty() {
            return Err(ApiError::BadRequest(bad));
        }
        Ok(out)
    }

    /// Fills declared defaults into a create's data where the field is absent or
    /// null (Payload's `defaultValue`), so hooks and the required check see them.
    pub fn apply_defaults(&self, data: &mut Map<String, Value>) -> ApiResult<()> {
        for f in &self.fields {
            let Some(default) = &f.default else { continue };
            if data.get(f.name).is_some_and(|v| !v.is_null()) {
                continue;
            }
            let v = canonical(f, default).map_err(|m| {
                ApiError::Internal(anyhow::anyhow!(
                    "default of {}.{} is not valid: {m}",
                    self.slug,
                    f.name
                ))
            })?;
            data.insert(f.name.to_string(), v);
        }
        Ok(())
    }

    fn check_required(&self, data: &Map<String, Value>, existing: Option<&Value>) -> ApiResult<()> {
        let mut bad = vec![];
        for f in self.fields.iter().filter(|f| f.required) {
            let present = match (data.get(f.name), existing) {
                (Some(v), _) => !v.is_null(),
                // Defaults from the database fill what the client left out.
                (None, None) => f.system || f.hidden || f.kind == Kind::Bool,
                (None, Some(_)) => true,
            };
            if !present {
                bad.push(FieldError::new(f.name, format!("{} is required.", f.name)));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadRequest(bad))
        }
    }

    /// Maps a constraint violation to the field it guards.
    pub fn map_db_error(&self, e: sqlx::Error) -> ApiError {
        if let sqlx::Error::Database(db) = &e {
            if let Some(c) = db.constraint() {
                let path = field_from_table_constraint(self.table, c).and_then(|col| {
                    self.fields
                        .iter()
                        .find(|f| crate::error::snake_to_camel(f.column) == col)
                        .map(|f| f.name.to_string())
                });
                match db.code().as_deref() {
                    Some("23505") => {
                        return ApiError::Conflict(vec![FieldError {
                            message: match &path {
                                Some(p) => format!(
                                    "A {} with this {p} already exists.",
                                    self.label.to_lowercase()
                                ),
                                None => "A record with these values already exists.".into(),
                            },
                            path,
                        }])
                    }
                    Some("23503") => {
                        return ApiError::BadRequest(vec![FieldError {
                            message: "The referenced record does not exist.".into(),
                            path,
                        }])
                    }
                    Some("23514") => {
                        return ApiError::BadRequest(vec![FieldError {
                            message: "The value is not allowed.".into(),
                            path,
                        }])
                    }
                    _ => {}
                }
            }
        }
        ApiError::from(e)
    }

    /// Creates a document inside `tx` (hooks included). Returns the stored document.
    pub async fn create_in(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        principal: &Principal,
        mut data: Map<String, Value>,
    ) -> ApiResult<Value> {
        self.apply_defaults(&mut data)?;
        {
            let mut change = Change {
                ctx,
                principal,
                create: true,
                data: &mut data,
                existing: None,
            };
            self.hooks.before_change(tx, &mut change).await?;
        }
        self.check_required(&data, None)?;
        let id = Uuid::now_v7();
        let mut qb = QueryBuilder::new(format!("INSERT INTO {} (id", self.table));
        let mut values = vec![];
        for (k, v) in &data {
            let f = self
                .field(k)
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("hook set unknown field {k}")))?;
            qb.push(format!(", {}", f.column));
            values.push(SqlValue::from_canonical(f.kind, v).map_err(|m| ApiError::field(k, m))?);
        }
        qb.push(") VALUES (");
        qb.push_bind(id);
        for v in values {
            qb.push(", ");
            v.push(&mut qb);
        }
        qb.push(")");
        qb.build()
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map_db_error(e))?;
        let doc = self
            .fetch(tx, id, false)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("row vanished")))?;
        self.hooks
            .after_change(tx, ctx, principal, &doc, None)
            .await?;
        if let Some(ev) = &self.events {
            ev.changed(tx, ctx, &doc, None).await?;
        }
        Ok(doc)
    }

    /// Updates a document inside `tx` (hooks included). `existing` must be locked.
    pub async fn update_in(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        principal: &Principal,
        existing: &Value,
        mut data: Map<String, Value>,
    ) -> ApiResult<Value> {
        let id = existing["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("document without id")))?;
        {
            let mut change = Change {
                ctx,
                principal,
                create: false,
                data: &mut data,
                existing: Some(existing),
            };
            self.hooks.before_change(tx, &mut change).await?;
        }
        self.check_required(&data, Some(existing))?;
        let mut qb = QueryBuilder::new(format!("UPDATE {} SET updated_at = now()", self.table));
        for (k, v) in &data {
            let f = self
                .field(k)
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("hook set unknown field {k}")))?;
            qb.push(format!(", {} = ", f.column));
            SqlValue::from_canonical(f.kind, v)
                .map_err(|m| ApiError::field(k, m))?
                .push(&mut qb);
        }
        qb.push(" WHERE id = ");
        qb.push_bind(id);
        qb.build()
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map_db_error(e))?;
        let doc = self
            .fetch(tx, id, false)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("row vanished")))?;
        self.hooks
            .after_change(tx, ctx, principal, &doc, Some(existing))
            .await?;
        if let Some(ev) = &self.events {
            ev.changed(tx, ctx, &doc, Some(existing)).await?;
        }
        Ok(doc)
    }
}

/// Parses JSON input for one field into its canonical JSON form.
pub fn canonical(f: &Field, v: &Value) -> Result<Value, String> {
    // Postgres stores no NUL in text (22021) nor in jsonb strings (22P05).
    if contains_nul(v) {
        return Err(NUL_MESSAGE.into());
    }
    if v.is_null() {
        return if f.required {
            Err(format!("{} is required.", f.name))
        } else {
            Ok(Value::Null)
        };
    }
    match f.kind {
        Kind::Text { max } => {
            let s = v.as_str().ok_or("Must be text.")?.trim();
            if f.required && s.is_empty() {
                return Err(format!("{} is required.", f.name));
            }
            if s.chars().count() > max {
                return Err(format!("At most {max} characters."));
            }
            Ok(if s.is_empty() { Value::Null } else { json!(s) })
        }
        Kind::Email => {
            let s = v.as_str().ok_or("Must be an email address.")?.trim();
            if !valid_email(s) {
                return Err("Must be a valid email address.".into());
            }
            Ok(json!(s.to_lowercase()))
        }
        Kind::Phone => {
            let s = v.as_str().ok_or("Must be a phone number.")?;
            crate::phone::normalize(s).map(Value::String)
        }
        Kind::Int { min, max } => {
            let n = match v {
                // 200.0 is a whole number too (JSON Schema's `integer` says so).
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                            .map(|f| f as i64)
                    })
                    .ok_or("Must be a whole number.")?,
                Value::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| "Must be a whole number.")?,
                _ => return Err("Must be a whole number.".into()),
            };
            if n < min || n > max {
                return Err(format!("Must be between {min} and {max}."));
            }
            Ok(json!(n))
        }
        Kind::Money => crate::money::parse_json(v).map(|d| json!(crate::money::format(d))),
        Kind::Bool => v
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| "Must be true or false.".into()),
        Kind::Date => {
            let s = v.as_str().ok_or("Must be a date (YYYY-MM-DD).")?;
            // Payload clients send full timestamps for date fields; take the date part.
            let day = s.get(..10).unwrap_or(s);
            NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .map(|d| json!(d.to_string()))
                .map_err(|_| "Must be a date (YYYY-MM-DD).".into())
        }
        Kind::Timestamp => {
            let s = v.as_str().ok_or("Must be an RFC 3339 timestamp.")?;
            DateTime::parse_from_rfc3339(s)
                .map(|d| {
                    json!(d
                        .with_timezone(&Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                })
                .map_err(|_| "Must be an RFC 3339 timestamp.".into())
        }
        Kind::Select(options) => {
            let s = v.as_str().ok_or("Must be one of the options.")?;
            if options.contains(&s) {
                Ok(json!(s))
            } else {
                Err(format!("Must be one of: {}.", options.join(", ")))
            }
        }
        Kind::Relation => {
            let s = v.as_str().ok_or("Must be an id.")?;
            Uuid::parse_str(s)
                .map(|u| json!(u.to_string()))
                .map_err(|_| "Must be a valid id.".into())
        }
        Kind::Relations => {
            let arr = v.as_array().ok_or("Must be a list of ids.")?;
            let mut seen = BTreeSet::new();
            let mut out = vec![];
            for x in arr {
                let u = x
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or("Must be a list of valid ids.")?;
                if seen.insert(u) {
                    out.push(json!(u.to_string()));
                }
            }
            Ok(Value::Array(out))
        }
        Kind::Point => {
            let arr = v
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or("Must be [longitude, latitude].")?;
            let (lng, lat) = (
                arr[0].as_f64().ok_or("Longitude must be a number.")?,
                arr[1].as_f64().ok_or("Latitude must be a number.")?,
            );
            if !(-180.0..=180.0).contains(&lng) {
                return Err("Longitude must be between -180 and 180.".into());
            }
            if !(-90.0..=90.0).contains(&lat) {
                return Err("Latitude must be between -90 and 90.".into());
            }
            Ok(json!([lng, lat]))
        }
        Kind::Json => Ok(v.clone()),
        Kind::Password => {
            let s = v.as_str().ok_or("Must be text.")?;
            if s.chars().count() < 8 {
                return Err("Must be at least 8 characters.".into());
            }
            if s.len() > 256 {
                return Err("At most 256 characters.".into());
            }
            Ok(json!(s))
        }
    }
}

/// The answer to text holding a NUL character.
pub const NUL_MESSAGE: &str = "Must not contain NUL characters (\\u0000).";

/// Whether any string (or object key) in `v` holds a NUL character.
pub fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Which list-query operators a field kind supports. Everything else is a 400
/// naming the field, never SQL Postgres would reject.
pub fn op_supported(kind: Kind, op: Op) -> bool {
    match op {
        Op::Exists | Op::Equals | Op::NotEquals => true,
        Op::Like => matches!(
            kind,
            Kind::Text { .. } | Kind::Email | Kind::Phone | Kind::Select(_)
        ),
        Op::In | Op::NotIn => !matches!(kind, Kind::Json | Kind::Point | Kind::Password),
        Op::GreaterThan | Op::GreaterThanEqual | Op::LessThan | Op::LessThanEqual => !matches!(
            kind,
            Kind::Bool | Kind::Json | Kind::Point | Kind::Relations | Kind::Password
        ),
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Equals => "equals",
        Op::NotEquals => "not_equals",
        Op::In => "in",
        Op::NotIn => "not_in",
        Op::GreaterThan => "greater_than",
        Op::GreaterThanEqual => "greater_than_equal",
        Op::LessThan => "less_than",
        Op::LessThanEqual => "less_than_equal",
        Op::Like => "like",
        Op::Exists => "exists",
    }
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c == ';' || c == '<' || c == '>')
        && !domain.contains('@')
}

fn parse_filter_value(kind: Kind, s: &str) -> Result<SqlValue, String> {
    if s.contains('\0') {
        return Err(NUL_MESSAGE.into());
    }
    Ok(match kind {
        Kind::Text { .. } | Kind::Email | Kind::Select(_) | Kind::Password => {
            SqlValue::Text(Some(s.to_string()))
        }
        Kind::Phone => SqlValue::Text(Some(
            crate::phone::normalize(s).unwrap_or_else(|_| s.to_string()),
        )),
        Kind::Int { .. } => SqlValue::Int(Some(s.parse().map_err(|_| "Must be a whole number.")?)),
        Kind::Money => SqlValue::Money(Some(s.parse().map_err(|_| "Must be a decimal amount.")?)),
        Kind::Bool => SqlValue::Bool(Some(match s {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err("Must be true or false.".into()),
        })),
        Kind::Date => SqlValue::Date(Some(
            NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                .map_err(|_| "Must be a date (YYYY-MM-DD).")?,
        )),
        Kind::Timestamp => SqlValue::Ts(Some(match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|_| "Must be an RFC 3339 timestamp or a date.")?
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc(),
        })),
        Kind::Relation | Kind::Relations => {
            SqlValue::Uuid(Some(Uuid::parse_str(s).map_err(|_| "Must be a valid id.")?))
        }
        Kind::Json | Kind::Point => {
            let v: Value = serde_json::from_str(s).map_err(|_| "Must be JSON.")?;
            if contains_nul(&v) {
                return Err(NUL_MESSAGE.into());
            }
            SqlValue::Json(Some(v))
        }
    })
}

/// A typed bind parameter.
#[derive(Debug, Clone)]
pub enum SqlValue {
    Text(Option<String>),
    Int(Option<i64>),
    Money(Option<Decimal>),
    Bool(Option<bool>),
    Date(Option<NaiveDate>),
    Ts(Option<DateTime<Utc>>),
    Uuid(Option<Uuid>),
    Uuids(Option<Vec<Uuid>>),
    Json(Option<Value>),
    Texts(Vec<String>),
    Ints(Vec<i64>),
    Moneys(Vec<Decimal>),
    Dates(Vec<NaiveDate>),
    Tss(Vec<DateTime<Utc>>),
    Bools(Vec<bool>),
}

impl SqlValue {
    pub fn push(self, qb: &mut QueryBuilder<'_, Postgres>) {
        match self {
            SqlValue::Text(v) => qb.push_bind(v),
            SqlValue::Int(v) => qb.push_bind(v),
            SqlValue::Money(v) => qb.push_bind(v),
            SqlValue::Bool(v) => qb.push_bind(v),
            SqlValue::Date(v) => qb.push_bind(v),
            SqlValue::Ts(v) => qb.push_bind(v),
            SqlValue::Uuid(v) => qb.push_bind(v),
            SqlValue::Uuids(v) => qb.push_bind(v),
            SqlValue::Json(v) => qb.push_bind(v.map(sqlx::types::Json)),
            SqlValue::Texts(v) => qb.push_bind(v),
            SqlValue::Ints(v) => qb.push_bind(v),
            SqlValue::Moneys(v) => qb.push_bind(v),
            SqlValue::Dates(v) => qb.push_bind(v),
            SqlValue::Tss(v) => qb.push_bind(v),
            SqlValue::Bools(v) => qb.push_bind(v),
        };
    }

    fn array(kind: Kind, values: Vec<SqlValue>) -> SqlValue {
        macro_rules! collect {
            ($variant:ident, $out:ident) => {
                SqlValue::$out(
                    values
                        .into_iter()
                        .filter_map(|v| {
                            if let SqlValue::$variant(Some(x)) = v {
                                Some(x)
                            } else {
                                None
                            }
                        })
                        .collect(),
                )
            };
        }
        match kind {
            Kind::Int { .. } => collect!(Int, Ints),
            Kind::Money => collect!(Money, Moneys),
            Kind::Date => collect!(Date, Dates),
            Kind::Timestamp => collect!(Ts, Tss),
            Kind::Bool => collect!(Bool, Bools),
            Kind::Relation | Kind::Relations => SqlValue::Uuids(Some(
                values
                    .into_iter()
                    .filter_map(|v| {
                        if let SqlValue::Uuid(Some(x)) = v {
                            Some(x)
                        } else {
                            None
                        }
                    })
                    .collect(),
            )),
            _ => collect!(Text, Texts),
        }
    }

    /// From canonical JSON (see [`canonical`]) to a bind value of the column's type.
    pub fn from_canonical(kind: Kind, v: &Value) -> Result<SqlValue, String> {
        let null = v.is_null();
        Ok(match kind {
            Kind::Text { .. } | Kind::Email | Kind::Phone | Kind::Select(_) | Kind::Password => {
                SqlValue::Text(if null {
                    None
                } else {
                    Some(v.as_str().ok_or("Must be text.")?.to_string())
                })
            }
            Kind::Int { .. } => SqlValue::Int(if null {
                None
            } else {
                Some(v.as_i64().ok_or("Must be a whole number.")?)
            }),
            Kind::Money => SqlValue::Money(if null {
                None
            } else {
                Some(crate::money::parse_json(v)?)
            }),
            Kind::Bool => SqlValue::Bool(if null {
                None
            } else {
                Some(v.as_bool().ok_or("Must be true or false.")?)
            }),
            Kind::Date => SqlValue::Date(if null {
                None
            } else {
                Some(
                    NaiveDate::parse_from_str(v.as_str().ok_or("Must be a date.")?, "%Y-%m-%d")
                        .map_err(|_| "Must be a date.")?,
                )
            }),
            Kind::Timestamp => SqlValue::Ts(if null {
                None
            } else {
                Some(
                    DateTime::parse_from_rfc3339(v.as_str().ok_or("Must be a timestamp.")?)
                        .map_err(|_| "Must be a timestamp.")?
                        .with_timezone(&Utc),
                )
            }),
            Kind::Relation => SqlValue::Uuid(if null {
                None
            } else {
                Some(
                    Uuid::parse_str(v.as_str().ok_or("Must be an id.")?)
                        .map_err(|_| "Must be an id.")?,
                )
            }),
            Kind::Relations => SqlValue::Uuids(if null {
                None
            } else {
                Some(
                    v.as_array()
                        .ok_or("Must be a list of ids.")?
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .and_then(|s| Uuid::parse_str(s).ok())
                                .ok_or("Must be a list of ids.")
                        })
                        .collect::<Result<_, _>>()?,
                )
            }),
            Kind::Point | Kind::Json => SqlValue::Json(if null { None } else { Some(v.clone()) }),
        })
    }
}

// ---- generic HTTP handlers -------------------------------------------------------

type Ctx = Arc<ServiceContext>;

#[derive(Clone)]
struct Routed {
    ctx: Ctx,
    coll: Arc<Collection>,
}

impl crate::auth::HasKeys for Routed {
    fn keys(&self) -> &crate::auth::Keys {
        &self.ctx.keys
    }
}

/// `/api/<svc>/<slug>` and `/api/<svc>/<slug>/{id}`.
pub fn routes(coll: Arc<Collection>, ctx: Ctx) -> Router {
    let base = format!("/api/{}/{}", ctx.name, coll.slug);
    Router::new()
        .route(&base, get(list_handler).post(create_handler))
        .route(
            &format!("{base}/{{id}}"),
            get(get_handler)
                .patch(update_handler)
                .delete(delete_handler),
        )
        .with_state(Routed { ctx, coll })
}

pub fn parse_id(s: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| ApiError::field("id", "Must be a valid id."))
}

/// Parses a JSON body, answering 400 (never 415/422) for anything unreadable.
pub fn parse_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))
}

async fn list_handler(
    State(s): State<Routed>,
    p: Principal,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<Value>>> {
    s.coll.check(&p, Operation::Read)?;
    let q = ListQuery::parse(raw.as_deref())?;
    let mut conn = s.ctx.pool.acquire().await?;
    Ok(Json(s.coll.list(&mut conn, &p, &q).await?))
}

async fn get_handler(
    State(s): State<Routed>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    s.coll.check(&p, Operation::Read)?;
    let id = parse_id(&id)?;
    let mut conn = s.ctx.pool.acquire().await?;
    let doc = s.coll.find_scoped(&mut conn, &p, id, false).await?;
    Ok(Json(s.coll.present(&p, &doc)))
}

async fn create_handler(
    State(s): State<Routed>,
    p: Principal,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    s.coll.check(&p, Operation::Create)?;
    let data = s.coll.validate_input(&p, &parse_body(&body)?, true)?;
    let mut tx = s.ctx.pool.begin().await?;
    let doc = s.coll.create_in(&mut tx, &s.ctx, &p, data).await?;
    tx.commit().await?;
    s.coll.hooks.after_commit(Operation::Create, &doc).await;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "doc": s.coll.present(&p, &doc), "message": format!("{} successfully created.", s.coll.label) }),
        ),
    ))
}

async fn update_handler(
    State(s): State<Routed>,
    p: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    s.coll.check(&p, Operation::Update)?;
    let id = parse_id(&id)?;
    let data = s.coll.validate_input(&p, &parse_body(&body)?, false)?;
    let mut tx = s.ctx.pool.begin().await?;
    s.coll
        .hooks
        .before_lock(&mut tx, Operation::Update, id)
        .await?;
    let existing = s.coll.find_scoped(&mut tx, &p, id, true).await?;
    let doc = s
        .coll
        .update_in(&mut tx, &s.ctx, &p, &existing, data)
        .await?;
    tx.commit().await?;
    s.coll.hooks.after_commit(Operation::Update, &doc).await;
    Ok(Json(
        json!({ "doc": s.coll.present(&p, &doc), "message": format!("{} successfully updated.", s.coll.label) }),
    ))
}

async fn delete_handler(
    State(s): State<Routed>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    s.coll.check(&p, Operation::Delete)?;
    let id = parse_id(&id)?;
    let mut tx = s.ctx.pool.begin().await?;
    s.coll
        .hooks
        .before_lock(&mut tx, Operation::Delete, id)
        .await?;
    let existing = s.coll.find_scoped(&mut tx, &p, id, true).await?;
    s.coll.hooks.before_delete(&mut tx, &p, &existing).await?;
    sqlx::query(&format!("DELETE FROM {} WHERE id = $1", s.coll.table))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
                ApiError::conflict(format!(
                    "This {} is still referenced by other records.",
                    s.coll.label.to_lowercase()
                ))
            }
            _ => s.coll.map_db_error(e),
        })?;
    s.coll
        .hooks
        .after_delete(&mut tx, &s.ctx, &existing)
        .await?;
    if let Some(ev) = &s.coll.events {
        ev.deleted(&mut tx, &s.ctx, &existing).await?;
    }
    tx.commit().await?;
    s.coll
        .hooks
        .after_commit(Operation::Delete, &existing)
        .await;
    Ok(Json(
        json!({ "doc": s.coll.present(&p, &existing), "message": format!("{} successfully deleted.", s.coll.label) }),
    ))
}

/// Publishes a stored document as a snapshot event through the outbox, inside the
/// caller's transaction: `publish_doc(tx, ctx, doc, PlanCreated).await?`. The
/// document's JSON (camelCase, money as strings) is the snapshot's wire form.
pub async fn publish_doc<S, E>(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    doc: &Value,
    wrap: impl FnOnce(S) -> E,
) -> ApiResult<()>
where
    S: serde::de::DeserializeOwned,
    E: isp_events::EventPayload,
{
    let snapshot: S = serde_json::from_value(doc.clone()).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("{} snapshot of the document: {e}", E::TYPE))
    })?;
    isp_events::outbox::enqueue(tx, ctx.name, &wrap(snapshot))
        .await
        .map_err(ApiError::Internal)?;
    Ok(())
}

/// Publishing of one collection's snapshot events, set with [`Collection::publishes`].
#[async_trait]
trait SnapshotEvents: Send + Sync {
    async fn changed(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
        previous: Option<&Value>,
    ) -> ApiResult<()>;
    async fn deleted(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
    ) -> ApiResult<()>;
}

struct Snapshots<S, C, U, D> {
    created: fn(S) -> C,
    updated: fn(S) -> U,
    deleted: fn(S) -> D,
}

#[async_trait]
impl<S, C, U, D> SnapshotEvents for Snapshots<S, C, U, D>
where
    S: serde::de::DeserializeOwned + Send + Sync + 'static,
    C: isp_events::EventPayload + Send + Sync + 'static,
    U: isp_events::EventPayload + Send + Sync + 'static,
    D: isp_events::EventPayload + Send + Sync + 'static,
{
    async fn changed(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
        previous: Option<&Value>,
    ) -> ApiResult<()> {
        publish_change(tx, ctx, doc, previous, self.created, self.updated).await
    }
    async fn deleted(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
    ) -> ApiResult<()> {
        publish_doc(tx, ctx, doc, self.deleted).await
    }
}

/// `publish_doc` with the created or updated wrapper, as `after_change` needs.
pub async fn publish_change<S, C, U>(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    doc: &Value,
    previous: Option<&Value>,
    created: impl FnOnce(S) -> C,
    updated: impl FnOnce(S) -> U,
) -> ApiResult<()>
where
    S: serde::de::DeserializeOwned,
    C: isp_events::EventPayload,
    U: isp_events::EventPayload,
{
    match previous {
        None => publish_doc(tx, ctx, doc, created).await,
        Some(_) => publish_doc(tx, ctx, doc, updated).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_values() {
        let money = Field::new("price", "price", Kind::Money).required();
        assert_eq!(canonical(&money, &json!(1500)).unwrap(), json!("1500.00"));
        assert!(canonical(&money, &json!(null)).is_err());
        let sel = Field::new("status", "status", Kind::Select(&["Active", "Inactive"]));
        assert!(canonical(&sel, &json!("active")).is_err());
        let email = Field::new("email", "email", Kind::Email);
        assert_eq!(
            canonical(&email, &json!(" A@B.co ")).unwrap(),
            json!("a@b.co")
        );
        assert!(canonical(&email, &json!("nope")).is_err());
        let pt = Field::new("location", "location", Kind::Point);
        assert!(canonical(&pt, &json!([39.66, -4.05])).is_ok());
        assert!(canonical(&pt, &json!([200, 0])).is_err());
        let date = Field::new("d", "d", Kind::Date);
        assert_eq!(
            canonical(&date, &json!("2026-02-28T00:00:00.000Z")).unwrap(),
            json!("2026-02-28")
        );
        assert!(canonical(&date, &json!("2026-02-30")).is_err());
        let int = Field::new("n", "n", Kind::Int { min: 1, max: 10 });
        assert!(canonical(&int, &json!(11)).is_err());
        assert!(canonical(&int, &json!(1.5)).is_err());
    }

    #[test]
    fn nul_characters_are_refused_in_every_kind() {
        let text = Field::new("name", "name", Kind::TEXT);
        assert_eq!(
            canonical(&text, &json!("a\u{0}b")).unwrap_err(),
            NUL_MESSAGE
        );
        let email = Field::new("email", "email", Kind::Email);
        assert!(canonical(&email, &json!("a\u{0}@b.co")).is_err());
        let j = Field::new("items", "items", Kind::Json);
        assert!(canonical(&j, &json!([{"x": "\u{0}"}])).is_err());
        assert!(canonical(&j, &json!({"k\u{0}": 1})).is_err());
        assert!(canonical(&j, &json!([{"x": "fine"}])).is_ok());
        assert!(parse_filter_value(Kind::TEXT, "a\u{0}").is_err());
        assert!(parse_filter_value(Kind::Json, r#"["\u0000"]"#).is_err());
        assert!(parse_filter_value(Kind::Json, r#"["ok"]"#).is_ok());
    }

    #[test]
    fn operators_a_kind_cannot_take_are_refused() {
        for kind in [Kind::Json, Kind::Point] {
            assert!(!op_supported(kind, Op::In));
            assert!(!op_supported(kind, Op::NotIn));
            assert!(!op_supported(kind, Op::GreaterThan));
            assert!(!op_supported(kind, Op::Like));
            assert!(op_supported(kind, Op::Equals));
            assert!(op_supported(kind, Op::Exists));
        }
        assert!(op_supported(Kind::Relations, Op::In));
        assert!(!op_supported(Kind::Relations, Op::LessThan));
        assert!(!op_supported(Kind::Bool, Op::GreaterThanEqual));
        assert!(op_supported(Kind::Money, Op::In));
        assert!(!op_supported(Kind::Money, Op::Like));
        assert!(op_supported(Kind::Date, Op::LessThanEqual));
    }

    #[test]
    fn declared_defaults_fill_what_the_client_left_out() {
        let c = Collection::new(
            "t",
            "things",
            "things",
            "Thing",
            vec![
                Field::new("status", "status", Kind::Select(&["Active", "Inactive"]))
                    .required()
                    .default_value(json!("Active")),
                Field::new("rate", "rate", Kind::Money).default_value(json!(1500)),
                Field::new("name", "name", Kind::TEXT).required(),
            ],
        );
        let mut data = Map::new();
        data.insert("rate".into(), Value::Null);
        c.apply_defaults(&mut data).unwrap();
        assert_eq!(data["status"], "Active");
        assert_eq!(data["rate"], "1500.00");
        assert!(
            c.check_required(&data, None).is_err(),
            "name is still required"
        );
        let mut given = Map::new();
        given.insert("status".into(), json!("Inactive"));
        c.apply_defaults(&mut given).unwrap();
        assert_eq!(given["status"], "Inactive");
    }
}
