//! What a collection may add to the engine's writes: row scopes, cross-field rules,
//! derived fields, outbox events, locks taken in a fixed order, effects after commit.

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Operation;
use crate::auth::Principal;
use crate::error::{ApiResult, FieldError};
use crate::ServiceContext;

#[derive(Debug, Clone)]
pub enum Scope {
    All,
    /// Only rows whose `column` equals the value.
    Eq(&'static str, super::SqlValue),
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
    /// An id the write must have (required on create, so present by the time
    /// hooks run): missing is an internal error, not a nil id.
    pub fn required_uuid(&self, field: &str) -> ApiResult<Uuid> {
        self.uuid(field).ok_or_else(|| {
            crate::ApiError::Internal(anyhow::anyhow!("{field} is missing from the write"))
        })
    }
    /// One of a spec list, if the write has the field: an unreadable value is an
    /// internal error (the engine has checked the options already).
    pub fn option<T: isp_events::options::Spec>(&self, field: &str) -> ApiResult<Option<T>> {
        let Some(v) = self.value(field) else {
            return Ok(None);
        };
        v.as_str()
            .and_then(T::parse)
            .map(Some)
            .ok_or_else(|| crate::ApiError::Internal(anyhow::anyhow!("{field} is unreadable: {v}")))
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
    /// Rules across fields, or against other tables, that need no stored
    /// document: the errors are reported with the fields' own (types, required,
    /// references) in one 400. `data` holds the fields that passed their own
    /// checks, before defaults. Runs inside the transaction, before `before_lock`.
    async fn validate(
        &self,
        _tx: &mut PgConnection,
        _principal: &Principal,
        _data: &Map<String, Value>,
        _create: bool,
    ) -> ApiResult<Vec<FieldError>> {
        Ok(vec![])
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
