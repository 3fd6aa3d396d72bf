//! Request bodies into canonical data: unknown, forbidden and malformed fields,
//! field rules, references, declared defaults, required fields, all reported in
//! one answer.

use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{canonical, Collection, Kind};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, FieldError};

impl Collection {
    /// Validates a create/update body into canonical JSON, checking field write
    /// access. Every bad field is named at once: unknown fields, wrong types, bad
    /// options, ranges and field rules, and (on create) the fields a client must
    /// send. Reference checks need the database: see [`Collection::validate_in`].
    pub fn validate_input(
        &self,
        principal: &Principal,
        body: &Value,
        create: bool,
    ) -> ApiResult<Map<String, Value>> {
        let (data, bad) = self.check_input(principal, body, create)?;
        if !bad.is_empty() {
            return Err(ApiError::BadRequest(bad));
        }
        Ok(data)
    }

    /// [`Collection::validate_input`] with the relations' references checked in
    /// `tx` too, all reported in one 400.
    pub async fn validate_in(
        &self,
        tx: &mut PgConnection,
        principal: &Principal,
        body: &Value,
        create: bool,
    ) -> ApiResult<Map<String, Value>> {
        let (data, mut bad) = self.check_input(principal, body, create)?;
        bad.extend(self.check_references(tx, &data).await?);
        let more = self.hooks.validate(tx, principal, &data, create).await?;
        // One entry per field: a field's own error stands for it.
        for e in more {
            if e.path.is_none() || !bad.iter().any(|b| b.path == e.path) {
                bad.push(e);
            }
        }
        if !bad.is_empty() {
            return Err(ApiError::BadRequest(bad));
        }
        Ok(data)
    }

    /// The canonical data and every bad field; a 403 for fields the principal may
    /// not write (that answer takes precedence: the request cannot succeed).
    fn check_input(
        &self,
        principal: &Principal,
        body: &Value,
        create: bool,
    ) -> ApiResult<(Map<String, Value>, Vec<FieldError>)> {
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
            match canonical(f, v).and_then(|c| match (f.check, c.is_null()) {
                (Some(check), false) => check(&c).map(|()| c),
                _ => Ok(c),
            }) {
                Ok(c) => {
                    out.insert(k.clone(), c);
                }
                Err(m) => bad.push(FieldError::new(k, m)),
            }
        }
        if !forbidden.is_empty() {
            return Err(ApiError::Forbidden(forbidden));
        }
        if create {
            // What the create body's schema lists as required: a field the client
            // may write, with no default, that only the client can give.
            for f in self.fields.iter().filter(|f| {
                f.required
                    && !f.system
                    && f.default.is_none()
                    && f.kind != Kind::Bool
                    && self.can_write_field(principal, f, true)
            }) {
                let given = input.get(f.name).is_some_and(|v| !v.is_null());
                if !given && !bad.iter().any(|e| e.path.as_deref() == Some(f.name)) {
                    bad.push(FieldError::new(f.name, format!("{} is required.", f.name)));
                }
            }
        }
        Ok((out, bad))
    }

    /// Relations ([`Field::references`]) whose value names no row of their table.
    async fn check_references(
        &self,
        tx: &mut PgConnection,
        data: &Map<String, Value>,
    ) -> ApiResult<Vec<FieldError>> {
        let mut bad = vec![];
        for f in &self.fields {
            let (Some(table), Some(v)) = (f.references, data.get(f.name)) else {
                continue;
            };
            let ids: Vec<Uuid> = match v {
                Value::String(s) => Uuid::parse_str(s).into_iter().collect(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|s| s.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                    .collect(),
                _ => continue,
            };
            if ids.is_empty() {
                continue;
            }
            let found: i64 = sqlx::query_scalar(&format!(
                "SELECT count(DISTINCT id) FROM {table} WHERE id = ANY($1)"
            ))
            .bind(&ids)
            .fetch_one(&mut *tx)
            .await?;
            let distinct = ids.iter().collect::<std::collections::BTreeSet<_>>().len();
            if found < distinct as i64 {
                bad.push(FieldError::new(
                    f.name,
                    format!("No {} with this id exists.", f.name),
                ));
            }
        }
        Ok(bad)
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

    pub(super) fn check_required(
        &self,
        data: &Map<String, Value>,
        existing: Option<&Value>,
    ) -> ApiResult<()> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collection::Field;
    use serde_json::json;

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
