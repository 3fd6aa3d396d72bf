//! Message templates: `{{ variable }}` placeholders rendered by minijinja.
//!
//! Each trigger event has a fixed set of variables (listed in the API docs from
//! [`variables_for`]); a template bound to a trigger may use only those, and a
//! template for manual or bulk sends only [`GENERAL`]. Saving checks the syntax and
//! the variables, so a send never fails on a template.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// What every template can use (manual replies, bulk sends, and every trigger).
pub const GENERAL: &[&str] = &[
    "firstName",
    "lastName",
    "fullName",
    "accountNumber",
    "phoneNumber",
];

/// The trigger events Support notifies customers about, with the variables each
/// adds to [`GENERAL`].
pub const TRIGGERS: &[(&str, &[&str])] = &[
    (
        "invoice.created",
        &["invoiceNumber", "amountDue", "dueDate"],
    ),
    (
        "invoice.overdue",
        &["invoiceNumber", "amountDue", "dueDate"],
    ),
    (
        "payment.received",
        &[
            "amountPaid",
            "paymentReference",
            "paymentDate",
            "paymentMethod",
        ],
    ),
    ("subscriber.activated", &["date", "reason"]),
    ("subscriber.suspended", &["date", "reason"]),
    ("subscriber.reactivated", &["date", "reason"]),
    ("ticket.updated", &["ticketId", "subject", "status"]),
];

pub fn trigger_names() -> Vec<&'static str> {
    TRIGGERS.iter().map(|(t, _)| *t).collect()
}

/// The variables a template bound to `trigger` (or to none) may use.
pub fn variables_for(trigger: Option<&str>) -> Option<Vec<&'static str>> {
    let mut vars: Vec<&'static str> = GENERAL.to_vec();
    if let Some(t) = trigger {
        let (_, extra) = TRIGGERS.iter().find(|(name, _)| *name == t)?;
        vars.extend_from_slice(extra);
    }
    Some(vars)
}

/// What [`check`] asks of a template bound to a trigger (or to none), as the
/// documents' `x-rules` say it.
pub fn rule() -> String {
    let per_trigger: Vec<String> = TRIGGERS
        .iter()
        .map(|(t, extra)| format!("{t}: {}", extra.join(", ")))
        .collect();
    format!(
        "content, subject: a template (minijinja) that parses and uses only {} and, bound to a triggerEvent, its variables ({})",
        GENERAL.join(", "),
        per_trigger.join("; ")
    )
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    // A variable missing at render time is a bug in our data, not blank text.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Checks syntax and variables. The error names what is wrong, for a 400 on `content`.
pub fn check(source: &str, trigger: Option<&str>) -> Result<(), String> {
    let allowed = variables_for(trigger).ok_or_else(|| "Unknown trigger event.".to_string())?;
    let env = env();
    let tmpl = env.template_from_str(source).map_err(|e| {
        format!(
            "The template does not parse: {}",
            e.detail().unwrap_or(&e.to_string())
        )
    })?;
    let mut unknown: Vec<String> = tmpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !allowed.contains(&v.as_str()))
        .collect();
    unknown.sort();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Unknown variable{} {}: the variables here are {}.",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            allowed.join(", ")
        ))
    }
}

/// Renders a checked template with `vars` (a JSON object of strings).
pub fn render(source: &str, vars: &Value) -> anyhow::Result<String> {
    let env = env();
    let tmpl = env.template_from_str(source)?;
    Ok(tmpl.render(vars)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_are_checked_per_trigger() {
        assert!(check(
            "Hi {{ firstName }}, {{ amountDue }} due",
            Some("invoice.created")
        )
        .is_ok());
        let e = check("Hi {{ firstName }}, {{ amountDue }}", None).unwrap_err();
        assert!(e.contains("amountDue"), "{e}");
        let e = check("{{ balance }} {{ zzz }}", Some("payment.received")).unwrap_err();
        assert!(e.contains("balance, zzz"), "{e}");
        assert!(check("Hi {{ firstName", None)
            .unwrap_err()
            .contains("parse"));
        assert!(check("x", Some("nope.event")).is_err());
    }

    #[test]
    fn renders_with_the_engine() {
        let out = render(
            "Dear {{ firstName }}, {{ amountDue }}",
            &json!({"firstName": "Amina", "amountDue": "KES 2500.00"}),
        )
        .unwrap();
        assert_eq!(out, "Dear Amina, KES 2500.00");
        assert!(render("{{ missing }}", &json!({})).is_err());
    }
}
