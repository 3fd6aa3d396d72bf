//! Payload's list queries on a collection: `where` filters checked against the
//! field whitelist and the kind's operators, bound values, sort, pages.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{contains_nul, Collection, Kind, Scope, SqlValue, NUL_MESSAGE};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::query::{Filter, ListQuery, Op, Page};

impl Collection {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collection::{canonical, Field};
    use serde_json::json;

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
}
