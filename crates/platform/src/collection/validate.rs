//! Request bodies into canonical data: unknown, forbidden and malformed fields,
//! declared defaults, required fields.

use serde_json::{Map, Value};

use super::{canonical, Collection, Kind};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, FieldError};

impl Collection {
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
