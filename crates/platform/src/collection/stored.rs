//! Reading fields of documents the engine wrote. A stored value that is missing
//! where the schema requires it, or unreadable, is an internal error (logged, a
//! 500), never a silent default: a nil id or a zero amount would be written on.

use chrono::NaiveDate;
use isp_events::options::Spec;
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

fn unreadable(field: &str, v: Option<&Value>) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(
        "stored field {field} is unreadable: {}",
        v.map_or("missing".to_string(), Value::to_string)
    ))
}

fn text<'a>(doc: &'a Value, field: &str) -> ApiResult<&'a str> {
    let v = doc.get(field);
    v.and_then(Value::as_str)
        .ok_or_else(|| unreadable(field, v))
}

pub fn uuid(doc: &Value, field: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text(doc, field)?).map_err(|_| unreadable(field, doc.get(field)))
}

/// Money (a decimal string, as the engine writes it).
pub fn money(doc: &Value, field: &str) -> ApiResult<Decimal> {
    text(doc, field)?
        .parse()
        .map_err(|_| unreadable(field, doc.get(field)))
}

/// Money that may be absent or null (then zero); present and unreadable is an error.
pub fn money_or_zero(v: Option<&Value>, field: &str) -> ApiResult<Decimal> {
    match v {
        None | Some(Value::Null) => Ok(Decimal::ZERO),
        Some(Value::String(s)) => s.parse().map_err(|_| unreadable(field, v)),
        Some(_) => Err(unreadable(field, v)),
    }
}

/// A date that may be absent or null; present and unreadable is an error.
pub fn date(v: Option<&Value>, field: &str) -> ApiResult<Option<NaiveDate>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| unreadable(field, v)),
        Some(_) => Err(unreadable(field, v)),
    }
}

/// One of a spec list, e.g. `stored::option::<InvoiceStatus>(doc, "status")`.
pub fn option<T: Spec>(doc: &Value, field: &str) -> ApiResult<T> {
    T::parse(text(doc, field)?).ok_or_else(|| unreadable(field, doc.get(field)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use isp_events::options::InvoiceStatus;
    use serde_json::json;

    #[test]
    fn missing_or_malformed_values_are_errors_not_defaults() {
        let doc = json!({"id": "not-a-uuid", "amountDue": "12.50", "status": "Paid", "bad": 3});
        assert!(uuid(&doc, "id").is_err());
        assert!(uuid(&doc, "absent").is_err());
        assert_eq!(money(&doc, "amountDue").unwrap(), Decimal::new(1250, 2));
        assert!(money(&doc, "bad").is_err());
        assert_eq!(money_or_zero(None, "x").unwrap(), Decimal::ZERO);
        assert!(money_or_zero(doc.get("bad"), "bad").is_err());
        assert_eq!(
            option::<InvoiceStatus>(&doc, "status").unwrap(),
            InvoiceStatus::Paid
        );
        assert!(option::<InvoiceStatus>(&doc, "amountDue").is_err());
        assert_eq!(date(Some(&json!(null)), "d").unwrap(), None);
        assert!(date(Some(&json!("2026-13-01")), "d").is_err());
    }
}
