//! Line items (`{description, quantity, price}`): an invoice's lines and the
//! one-off charges of a new subscriber. One rule for every service that takes
//! them (CRM's lead conversion checks them before calling Billing, Billing when
//! it stores them), so a charge CRM accepts is one Billing accepts.

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, FieldError};

/// At most this many lines on one invoice.
pub const MAX_ITEMS: usize = 100;
/// A description is 1 to this many characters.
pub const MAX_DESCRIPTION: usize = 200;
/// Quantities are whole numbers from 1 to this.
pub const MAX_QUANTITY: i64 = 10_000;

/// The largest unit price of one line (KES 10 000 000).
pub fn max_price() -> Decimal {
    Decimal::from(10_000_000)
}

use crate::money::max as money_max;

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LineItem {
    pub description: String,
    pub quantity: i64,
    pub price: Decimal,
}

impl LineItem {
    /// The stored and wire form: money as a two-place decimal string.
    pub fn to_json(&self) -> Value {
        json!({"description": self.description, "quantity": self.quantity,
               "price": crate::money::format(self.price)})
    }
}

/// The sum of price x quantity.
pub fn total(items: &[LineItem]) -> Decimal {
    items
        .iter()
        .map(|i| i.price * Decimal::from(i.quantity))
        .sum()
}

/// Parses line items, naming every bad one (`<path>.<i>.<field>`) at once.
/// `allow_empty`: an empty list is fine (one-off charges), or not (an invoice).
pub fn parse(v: &Value, path: &str, allow_empty: bool) -> ApiResult<Vec<LineItem>> {
    let Some(arr) = v.as_array() else {
        return Err(ApiError::field(
            path,
            "Must be a list of {description, quantity, price}.",
        ));
    };
    if arr.is_empty() && !allow_empty {
        return Err(ApiError::field(path, "At least one line item is required."));
    }
    if arr.len() > MAX_ITEMS {
        return Err(ApiError::field(
            path,
            format!("At most {MAX_ITEMS} line items."),
        ));
    }
    let mut errors = vec![];
    let mut out = vec![];
    for (i, item) in arr.iter().enumerate() {
        let p = |f: &str| format!("{path}.{i}.{f}");
        let Some(obj) = item.as_object() else {
            errors.push(FieldError::new(
                format!("{path}.{i}"),
                "Each item is {description, quantity, price}.",
            ));
            continue;
        };
        for k in obj
            .keys()
            .filter(|k| !matches!(k.as_str(), "description" | "quantity" | "price" | "id"))
        {
            errors.push(FieldError::new(p(k), format!("Unknown field {k:?}.")));
        }
        // The bound is on what is sent (the documents' maxLength), before trimming.
        let description = match obj.get("description") {
            Some(Value::String(s)) if s.chars().count() <= MAX_DESCRIPTION => Some(s.trim()),
            _ => None,
        }
        .filter(|d| !d.is_empty() && !d.contains('\0'));
        if description.is_none() {
            errors.push(FieldError::new(
                p("description"),
                format!("A description of 1 to {MAX_DESCRIPTION} characters is required."),
            ));
        }
        let quantity = match obj.get("quantity") {
            // 2.0 is a whole number too (JSON Schema's `integer` says so).
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1e6)
                        .map(|f| f as i64)
                })
                .filter(|q| (1..=MAX_QUANTITY).contains(q)),
            _ => None,
        };
        if quantity.is_none() {
            errors.push(FieldError::new(
                p("quantity"),
                format!("Must be a whole number from 1 to {MAX_QUANTITY}."),
            ));
        }
        let price = match obj.get("price") {
            None | Some(Value::Null) => Err("price is required.".to_string()),
            Some(v) => crate::money::parse_json(v).and_then(|d| {
                if d < Decimal::ZERO {
                    Err("The price cannot be negative.".into())
                } else if d > max_price() {
                    Err(format!("The price is too large (at most {}).", max_price()))
                } else {
                    Ok(d)
                }
            }),
        };
        match (price, description, quantity) {
            (Ok(price), Some(description), Some(quantity)) => out.push(LineItem {
                description: description.to_string(),
                quantity,
                price,
            }),
            (Err(m), _, _) => errors.push(FieldError::new(p("price"), m)),
            _ => {}
        }
    }
    if errors.is_empty() && total(&out) > money_max() {
        errors.push(FieldError::new(
            path,
            format!(
                "The total of the line items is too large (at most {}).",
                money_max()
            ),
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::BadRequest(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: Value) -> Vec<String> {
        let mut p: Vec<String> = parse(&v, "items", true)
            .unwrap_err()
            .errors()
            .into_iter()
            .filter_map(|e| e.path)
            .collect();
        p.sort();
        p
    }

    #[test]
    fn every_bad_item_is_named() {
        assert_eq!(
            paths(json!([
                {"description": "", "quantity": 0, "price": "-1"},
                5,
                {"description": "ok", "quantity": 1, "price": 1, "colour": "red"},
            ])),
            [
                "items.0.description",
                "items.0.price",
                "items.0.quantity",
                "items.1",
                "items.2.colour"
            ]
        );
    }

    #[test]
    fn limits_are_one_rule() {
        let long = "x".repeat(MAX_DESCRIPTION + 1);
        assert_eq!(
            paths(json!([{"description": long, "quantity": 1, "price": 1}])),
            ["items.0.description"]
        );
        assert_eq!(
            paths(json!([{"description": "a", "quantity": MAX_QUANTITY + 1, "price": 1}])),
            ["items.0.quantity"]
        );
        assert_eq!(
            paths(json!([{"description": "a", "quantity": 1, "price": "10000000.01"}])),
            ["items.0.price"]
        );
        let ok = parse(
            &json!([{"description": " Router ", "quantity": 2, "price": "10000000"}]),
            "items",
            false,
        )
        .unwrap();
        assert_eq!(ok[0].description, "Router");
        assert_eq!(total(&ok), Decimal::from(20_000_000));
        assert!(parse(&json!([]), "items", false).is_err());
        assert!(parse(&json!([]), "items", true).unwrap().is_empty());
    }
}
