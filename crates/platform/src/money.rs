//! Money is KES as an exact decimal with at most two places. JSON carries it as a
//! string ("1500.00") so no client or parser ever rounds it through a float;
//! numbers are accepted on input and converted through their shortest decimal text.

use rust_decimal::Decimal;
use std::str::FromStr;

pub fn parse_json(v: &serde_json::Value) -> Result<Decimal, String> {
    let d = match v {
        serde_json::Value::String(s) => {
            Decimal::from_str(s.trim()).map_err(|_| "Must be a decimal amount.".to_string())?
        }
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Decimal::from(i)
            } else {
                // serde_json prints the shortest text that round-trips, so 1999.99 stays 1999.99.
                Decimal::from_str(&n.to_string())
                    .map_err(|_| "Must be a decimal amount.".to_string())?
            }
        }
        _ => return Err("Must be a decimal amount.".into()),
    };
    if d.normalize().scale() > 2 {
        return Err("At most two decimal places.".into());
    }
    // numeric(14,2) holds at most 999 999 999 999.99: 10^12 itself overflows.
    if d.abs() >= Decimal::from(1_000_000_000_000i64) {
        return Err("The amount is too large (at most 999999999999.99).".into());
    }
    Ok(d.round_dp(2))
}

/// The largest amount a `numeric(14,2)` column holds: 999,999,999,999.99.
pub fn max() -> Decimal {
    Decimal::new(99_999_999_999_999, 2)
}

/// Formats with exactly two decimals, the way the API returns money.
pub fn format(d: Decimal) -> String {
    let mut d = d.round_dp(2);
    d.rescale(2);
    d.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_exactly() {
        assert_eq!(format(parse_json(&json!(1999.99)).unwrap()), "1999.99");
        assert_eq!(format(parse_json(&json!("1500")).unwrap()), "1500.00");
        assert_eq!(format(parse_json(&json!(0.1)).unwrap()), "0.10");
        assert!(parse_json(&json!("1.234")).is_err());
        assert!(parse_json(&json!("abc")).is_err());
        assert!(parse_json(&json!(true)).is_err());
    }

    #[test]
    fn bounds_fit_numeric_14_2() {
        assert_eq!(
            format(parse_json(&json!("999999999999.99")).unwrap()),
            "999999999999.99"
        );
        assert!(parse_json(&json!("-999999999999.99")).is_ok());
        assert!(parse_json(&json!("1000000000000")).is_err());
        assert!(parse_json(&json!(1_000_000_000_000i64)).is_err());
        assert!(parse_json(&json!("-1000000000000.00")).is_err());
        assert!(parse_json(&json!(1e20)).is_err());
    }
}
