//! The field model: what kinds of value a collection holds, and how a JSON input
//! becomes the one canonical form of its kind (trimmed text, E.164 phones, money as
//! a two-place decimal string, ...). A new kind adds its parsing here, its SQL in
//! `store` and `list`, and its schema in `openapi`.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::Roles;

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

/// A field's own rule on its canonical value: the message of a 400 when broken.
pub type FieldRule = fn(&Value) -> Result<(), String>;

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
    /// A rule beyond the kind (money above zero), checked by the engine with the
    /// kind's own checks on the canonical value, so that a 400 names it beside
    /// every other bad field.
    pub check: Option<FieldRule>,
    /// The table (the service's own, or a projection) whose `id` a relation's
    /// value must name; checked before hooks run, beside the other fields.
    pub references: Option<&'static str>,
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
            check: None,
            references: None,
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
    /// Documents the collection's own rule for this field (see [`Field::schema`]):
    /// the keywords given replace the kind's in create and update bodies.
    pub fn schema(mut self, keywords: Value) -> Self {
        self.schema = Some(keywords);
        self
    }
    /// A rule the engine checks (see [`Field::check`]), documented by `keywords`.
    pub fn rule(mut self, keywords: Value, check: FieldRule) -> Self {
        self.schema = Some(keywords);
        self.check = Some(check);
        self
    }
    /// Money above zero (a price, a payment): documented and checked.
    pub fn positive_money(self) -> Self {
        self.rule(
            crate::openapi::positive_money(),
            |v| match crate::money::parse_json(v) {
                Ok(d) if d > rust_decimal::Decimal::ZERO => Ok(()),
                _ => Err("Must be more than 0 KES.".into()),
            },
        )
    }
    /// Money of zero or more (a commission rate's amount): documented and checked.
    pub fn non_negative_money(self) -> Self {
        self.rule(
            crate::openapi::non_negative_money(),
            |v| match crate::money::parse_json(v) {
                Ok(d) if d >= rust_decimal::Decimal::ZERO => Ok(()),
                _ => Err("Must be 0 KES or more.".into()),
            },
        )
    }
    /// The relation must name a row of `table` (see [`Field::references`]).
    pub fn references(mut self, table: &'static str) -> Self {
        self.references = Some(table);
        self
    }
    /// The spec's `defaultValue` (any form [`canonical`] accepts for the kind).
    pub fn default_value(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
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
            let raw = v.as_str().ok_or("Must be text.")?;
            // The bound is on what is sent (the documents' `maxLength`), spaces
            // that trimming would drop included.
            if raw.chars().count() > max {
                return Err(format!("At most {max} characters."));
            }
            let s = raw.trim();
            if f.required && s.is_empty() {
                return Err(format!("{} is required.", f.name));
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
            if s.chars().count() > 256 {
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

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    // Characters, not bytes: the documents' lengths count characters.
    !local.is_empty()
        && local.chars().count() <= 64
        && domain.chars().count() <= 253
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c == ';' || c == '<' || c == '>')
        && !domain.contains('@')
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

    /// Lengths are the documents' `maxLength`: characters of what is sent.
    #[test]
    fn lengths_count_characters_of_what_is_sent() {
        let text = Field::new("t", "t", Kind::Text { max: 5 });
        assert_eq!(canonical(&text, &json!(" abc ")).unwrap(), json!("abc"));
        assert!(
            canonical(&text, &json!("abc    ")).is_err(),
            "spaces count before trimming"
        );
        assert_eq!(canonical(&text, &json!("ééééé")).unwrap(), json!("ééééé"));
        let pw = Field::new("p", "p", Kind::Password);
        assert!(
            canonical(&pw, &json!("é".repeat(256))).is_ok(),
            "256 characters"
        );
        assert!(canonical(&pw, &json!("é".repeat(257))).is_err());
        let email = Field::new("e", "e", Kind::Email);
        let local = "é".repeat(64);
        assert!(canonical(&email, &json!(format!("{local}@example.co"))).is_ok());
        assert!(canonical(&email, &json!(format!("{local}é@example.co"))).is_err());
    }
}
