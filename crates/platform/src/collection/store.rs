//! SQL for one document: the JSON select Postgres builds, typed bind values,
//! inserts and updates (with their hooks), and constraint names mapped to fields.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{Change, Collection, Kind};
use crate::auth::Principal;
use crate::error::{field_from_table_constraint, ApiError, ApiResult, FieldError};
use crate::ServiceContext;

impl Collection {
    /// `SELECT <doc json> FROM <table> t`: the whole document (hidden fields excluded).
    pub(super) fn build_select(&self) -> String {
        let mut pairs = vec![
            "'id', t.id".to_string(),
            "'createdAt', to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')".to_string(),
            "'updatedAt', to_char(t.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')".to_string(),
        ];
        for f in self
            .fields
            .iter()
            .filter(|f| !f.hidden && f.kind != Kind::Password)
        {
            let expr = match f.kind {
                Kind::Money => format!("to_char(t.{0}, 'FM999999999990.00')", f.column),
                Kind::Timestamp => format!(
                    "to_char(t.{0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                    f.column
                ),
                _ => format!("t.{}", f.column),
            };
            pairs.push(format!("'{}', {}", f.name, expr));
        }
        // jsonb_build_object takes at most 100 arguments: concatenate chunks.
        let objects: Vec<String> = pairs
            .chunks(40)
            .map(|c| format!("jsonb_build_object({})", c.join(", ")))
            .collect();
        format!(
            "SELECT ({})::text AS doc FROM {} t",
            objects.join(" || "),
            self.table
        )
    }

    /// Fetches one document by id (no access checks), optionally locking the row.
    pub async fn fetch(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        lock: bool,
    ) -> ApiResult<Option<Value>> {
        let sql = format!(
            "{} WHERE t.id = $1{}",
            self.select_sql,
            if lock { " FOR UPDATE" } else { "" }
        );
        let row: Option<String> = sqlx::query_scalar(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|s| serde_json::from_str(&s).map_err(|e| ApiError::Internal(e.into())))
            .transpose()
    }

    /// Maps a constraint violation to the field it guards.
    pub fn map_db_error(&self, e: sqlx::Error) -> ApiError {
        if let sqlx::Error::Database(db) = &e {
            if let Some(c) = db.constraint() {
                let path = field_from_table_constraint(self.table, c).and_then(|col| {
                    self.fields
                        .iter()
                        .find(|f| crate::error::snake_to_camel(f.column) == col)
                        .map(|f| f.name.to_string())
                });
                match db.code().as_deref() {
                    Some("23505") => {
                        return ApiError::Conflict(vec![FieldError {
                            message: match &path {
                                Some(p) => format!(
                                    "A {} with this {p} already exists.",
                                    self.label.to_lowercase()
                                ),
                                None => "A record with these values already exists.".into(),
                            },
                            path,
                        }])
                    }
                    Some("23503") => {
                        return ApiError::BadRequest(vec![FieldError {
                            message: "The referenced record does not exist.".into(),
                            path,
                        }])
                    }
                    Some("23514") => {
                        return ApiError::BadRequest(vec![FieldError {
                            message: "The value is not allowed.".into(),
                            path,
                        }])
                    }
                    _ => {}
                }
            }
        }
        ApiError::from(e)
    }

    /// Creates a document inside `tx` (hooks included). Returns the stored document.
    pub async fn create_in(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        principal: &Principal,
        data: Map<String, Value>,
    ) -> ApiResult<Value> {
        self.write_in(tx, ctx, principal, None, data).await
    }

    /// Updates a document inside `tx` (hooks included). `existing` must be locked.
    pub async fn update_in(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        principal: &Principal,
        existing: &Value,
        data: Map<String, Value>,
    ) -> ApiResult<Value> {
        self.write_in(tx, ctx, principal, Some(existing), data)
            .await
    }

    /// A create (no `existing`) or an update: defaults, `before_change`, the
    /// required check, the row, the stored document, `after_change` and the
    /// snapshot event, all in `tx`.
    async fn write_in(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        principal: &Principal,
        existing: Option<&Value>,
        mut data: Map<String, Value>,
    ) -> ApiResult<Value> {
        let id = match existing {
            None => {
                self.apply_defaults(&mut data)?;
                Uuid::now_v7()
            }
            Some(doc) => doc["id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("document without id")))?,
        };
        {
            let mut change = Change {
                ctx,
                principal,
                create: existing.is_none(),
                data: &mut data,
                existing,
            };
            self.hooks.before_change(tx, &mut change).await?;
        }
        self.check_required(&data, existing)?;
        let mut columns = vec![];
        for (k, v) in &data {
            let f = self
                .field(k)
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("hook set unknown field {k}")))?;
            columns.push((
                f.column,
                SqlValue::from_canonical(f.kind, v).map_err(|m| ApiError::field(k, m))?,
            ));
        }
        let mut qb;
        if existing.is_none() {
            qb = QueryBuilder::new(format!("INSERT INTO {} (id", self.table));
            for (column, _) in &columns {
                qb.push(format!(", {column}"));
            }
            qb.push(") VALUES (");
            qb.push_bind(id);
            for (_, v) in columns {
                qb.push(", ");
                v.push(&mut qb);
            }
            qb.push(")");
        } else {
            qb = QueryBuilder::new(format!("UPDATE {} SET updated_at = now()", self.table));
            for (column, v) in columns {
                qb.push(format!(", {column} = "));
                v.push(&mut qb);
            }
            qb.push(" WHERE id = ");
            qb.push_bind(id);
        }
        qb.build()
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map_db_error(e))?;
        let doc = self
            .fetch(tx, id, false)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("row vanished")))?;
        self.hooks
            .after_change(tx, ctx, principal, &doc, existing)
            .await?;
        if let Some(ev) = &self.events {
            ev.changed(tx, ctx, &doc, existing).await?;
        }
        Ok(doc)
    }
}

/// A typed bind parameter.
#[derive(Debug, Clone)]
pub enum SqlValue {
    Text(Option<String>),
    Int(Option<i64>),
    Money(Option<Decimal>),
    Bool(Option<bool>),
    Date(Option<NaiveDate>),
    Ts(Option<DateTime<Utc>>),
    Uuid(Option<Uuid>),
    Uuids(Option<Vec<Uuid>>),
    Json(Option<Value>),
    Texts(Vec<String>),
    Ints(Vec<i64>),
    Moneys(Vec<Decimal>),
    Dates(Vec<NaiveDate>),
    Tss(Vec<DateTime<Utc>>),
    Bools(Vec<bool>),
}

impl SqlValue {
    pub fn push(self, qb: &mut QueryBuilder<'_, Postgres>) {
        match self {
            SqlValue::Text(v) => qb.push_bind(v),
            SqlValue::Int(v) => qb.push_bind(v),
            SqlValue::Money(v) => qb.push_bind(v),
            SqlValue::Bool(v) => qb.push_bind(v),
            SqlValue::Date(v) => qb.push_bind(v),
            SqlValue::Ts(v) => qb.push_bind(v),
            SqlValue::Uuid(v) => qb.push_bind(v),
            SqlValue::Uuids(v) => qb.push_bind(v),
            SqlValue::Json(v) => qb.push_bind(v.map(sqlx::types::Json)),
            SqlValue::Texts(v) => qb.push_bind(v),
            SqlValue::Ints(v) => qb.push_bind(v),
            SqlValue::Moneys(v) => qb.push_bind(v),
            SqlValue::Dates(v) => qb.push_bind(v),
            SqlValue::Tss(v) => qb.push_bind(v),
            SqlValue::Bools(v) => qb.push_bind(v),
        };
    }

    pub(super) fn array(kind: Kind, values: Vec<SqlValue>) -> SqlValue {
        macro_rules! collect {
            ($variant:ident, $out:ident) => {
                SqlValue::$out(
                    values
                        .into_iter()
                        .filter_map(|v| {
                            if let SqlValue::$variant(Some(x)) = v {
                                Some(x)
                            } else {
                                None
                            }
                        })
                        .collect(),
                )
            };
        }
        match kind {
            Kind::Int { .. } => collect!(Int, Ints),
            Kind::Money => collect!(Money, Moneys),
            Kind::Date => collect!(Date, Dates),
            Kind::Timestamp => collect!(Ts, Tss),
            Kind::Bool => collect!(Bool, Bools),
            Kind::Relation | Kind::Relations => SqlValue::Uuids(Some(
                values
                    .into_iter()
                    .filter_map(|v| {
                        if let SqlValue::Uuid(Some(x)) = v {
                            Some(x)
                        } else {
                            None
                        }
                    })
                    .collect(),
            )),
            _ => collect!(Text, Texts),
        }
    }

    /// From canonical JSON (see [`canonical`]) to a bind value of the column's type.
    pub fn from_canonical(kind: Kind, v: &Value) -> Result<SqlValue, String> {
        let null = v.is_null();
        Ok(match kind {
            Kind::Text { .. } | Kind::Email | Kind::Phone | Kind::Select(_) | Kind::Password => {
                SqlValue::Text(if null {
                    None
                } else {
                    Some(v.as_str().ok_or("Must be text.")?.to_string())
                })
            }
            Kind::Int { .. } => SqlValue::Int(if null {
                None
            } else {
                Some(v.as_i64().ok_or("Must be a whole number.")?)
            }),
            Kind::Money => SqlValue::Money(if null {
                None
            } else {
                Some(crate::money::parse_json(v)?)
            }),
            Kind::Bool => SqlValue::Bool(if null {
                None
            } else {
                Some(v.as_bool().ok_or("Must be true or false.")?)
            }),
            Kind::Date => SqlValue::Date(if null {
                None
            } else {
                Some(
                    NaiveDate::parse_from_str(v.as_str().ok_or("Must be a date.")?, "%Y-%m-%d")
                        .map_err(|_| "Must be a date.")?,
                )
            }),
            Kind::Timestamp => SqlValue::Ts(if null {
                None
            } else {
                Some(
                    DateTime::parse_from_rfc3339(v.as_str().ok_or("Must be a timestamp.")?)
                        .map_err(|_| "Must be a timestamp.")?
                        .with_timezone(&Utc),
                )
            }),
            Kind::Relation => SqlValue::Uuid(if null {
                None
            } else {
                Some(
                    Uuid::parse_str(v.as_str().ok_or("Must be an id.")?)
                        .map_err(|_| "Must be an id.")?,
                )
            }),
            Kind::Relations => SqlValue::Uuids(if null {
                None
            } else {
                Some(
                    v.as_array()
                        .ok_or("Must be a list of ids.")?
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .and_then(|s| Uuid::parse_str(s).ok())
                                .ok_or("Must be a list of ids.")
                        })
                        .collect::<Result<_, _>>()?,
                )
            }),
            Kind::Point | Kind::Json => SqlValue::Json(if null { None } else { Some(v.clone()) }),
        })
    }
}
