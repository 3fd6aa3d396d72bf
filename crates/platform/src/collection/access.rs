//! Who may do what: operation roles and scopes, field read and write limits, and
//! the document as a principal may see it.

use serde_json::{Map, Value};

use super::{Collection, Field, Kind, Operation};
use crate::auth::{Principal, Roles};
use crate::error::{ApiError, ApiResult};

impl Collection {
    /// The roles of an operation, and services whose token has the scope
    /// `<service>.<slug>.<operation>`.
    pub fn allowed(&self, p: &Principal, op: Operation) -> bool {
        if let Operation::Action(name) = op {
            if !self.actions.iter().any(|(n, _)| *n == name) {
                return false;
            }
        }
        p.in_roles(self.roles(op)) || p.has_scope(&self.scope(op))
    }

    /// The staff roles that may do `op`.
    pub fn roles(&self, op: Operation) -> Roles {
        match op {
            Operation::Read => self.read,
            Operation::Create => self.create,
            Operation::Update => self.update,
            Operation::Delete => self.delete,
            Operation::Action(name) => self
                .actions
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Roles::NONE, |(_, r)| *r),
        }
    }

    /// The service scope that allows `op`: `<service>.<slug>.<operation>`.
    pub fn scope(&self, op: Operation) -> String {
        format!("{}.{}", self.scope_prefix, op.as_str())
    }

    /// 403 unless `p` may do `op`: what a custom route calls first, so that it
    /// never restates a role list or a scope string.
    pub fn authorize(&self, p: &Principal, op: Operation) -> ApiResult<()> {
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

    pub(super) fn can_write_field(&self, p: &Principal, f: &Field, create: bool) -> bool {
        if f.system || (!create && f.immutable) {
            return false;
        }
        match p {
            // As for reads: a field kept from some roles (a subscriber's status, a
            // work order's assignee) is kept from services too, unless their token
            // names it: `<prefix>.<field>.write`.
            Principal::Service { .. } => {
                f.write.is_none() || p.has_scope(&format!("{}.{}.write", self.scope_prefix, f.name))
            }
            Principal::Staff { role, .. } => f
                .write
                .unwrap_or(if create { self.create } else { self.update })
                .contains(*role),
        }
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
}
