//! Payload-style list queries: `?limit=10&page=2&sort=-createdAt`
//! `&where[status][equals]=Active&where[or][0][name][like]=fibre`.
//!
//! This module only parses; the collection engine checks every field name against
//! its whitelist and binds every value as a typed parameter, so user input never
//! becomes SQL text.

use crate::error::{ApiError, FieldError};

pub const DEFAULT_LIMIT: i64 = 10;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    GreaterThan,
    GreaterThanEqual,
    LessThan,
    LessThanEqual,
    Like,
    Exists,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "equals" => Op::Equals,
            "not_equals" => Op::NotEquals,
            "in" => Op::In,
            "not_in" => Op::NotIn,
            "greater_than" => Op::GreaterThan,
            "greater_than_equal" => Op::GreaterThanEqual,
            "less_than" => Op::LessThan,
            "less_than_equal" => Op::LessThanEqual,
            "like" => Op::Like,
            "exists" => Op::Exists,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: String,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub limit: i64,
    pub page: i64,
    /// (field, descending)
    pub sort: Vec<(String, bool)>,
    /// ANDed together.
    pub filters: Vec<Filter>,
    /// Each group is ANDed inside; groups are ORed; the whole is ANDed with `filters`.
    pub or_groups: Vec<Vec<Filter>>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            page: 1,
            sort: vec![],
            filters: vec![],
            or_groups: vec![],
        }
    }
}

impl ListQuery {
    pub fn parse(raw: Option<&str>) -> Result<ListQuery, ApiError> {
        let mut q = ListQuery::default();
        let mut errors = vec![];
        let mut or: std::collections::BTreeMap<u32, Vec<Filter>> = Default::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            match k.as_str() {
                "limit" => match v.parse::<i64>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                    // Payload treats limit=0 as "no limit"; we cap instead of streaming everything.
                    Ok(0) => q.limit = MAX_LIMIT,
                    _ => errors.push(FieldError::new(
                        "limit",
                        format!("limit must be 1 to {MAX_LIMIT}."),
                    )),
                },
                "page" => match v.parse::<i64>() {
                    Ok(n) if (1..=1_000_000).contains(&n) => q.page = n,
                    _ => errors.push(FieldError::new(
                        "page",
                        "page must be a whole number from 1.",
                    )),
                },
                "sort" => {
                    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        match part.strip_prefix('-') {
                            Some(f) => q.sort.push((f.to_string(), true)),
                            None => q.sort.push((part.to_string(), false)),
                        }
                    }
                }
                "depth" | "draft" | "locale" => {}
                _ if k.starts_with("where[") => {
                    let parts = bracket_parts(&k["where".len()..]);
                    match parts.as_slice() {
                        [field, op] => match Op::parse(op) {
                            Some(op) => q.filters.push(Filter {
                                field: field.clone(),
                                op,
                                value: v,
                            }),
                            None => errors.push(FieldError::new(
                                format!("where.{field}"),
                                format!("Unknown operator {op:?}."),
                            )),
                        },
                        [group, idx, field, op] if group == "or" || group == "and" => {
                            let (Ok(i), Some(op)) = (idx.parse::<u32>(), Op::parse(op)) else {
                                errors.push(FieldError::new(k.clone(), "Malformed where clause."));
                                continue;
                            };
                            let f = Filter {
                                field: field.clone(),
                                op,
                                value: v,
                            };
                            if group == "or" {
                                or.entry(i).or_default().push(f);
                            } else {
                                q.filters.push(f);
                            }
                        }
                        _ => errors.push(FieldError::new(k.clone(), "Malformed where clause.")),
                    }
                }
                _ => {}
            }
        }
        q.or_groups = or.into_values().collect();
        if errors.is_empty() {
            Ok(q)
        } else {
            Err(ApiError::BadRequest(errors))
        }
    }

    pub fn offset(&self) -> i64 {
        (self.page - 1) * self.limit
    }
}

fn bracket_parts(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = s;
    while let Some(start) = rest.strip_prefix('[') {
        match start.find(']') {
            Some(end) => {
                out.push(start[..end].to_string());
                rest = &start[end + 1..];
            }
            None => return vec![],
        }
    }
    if !rest.is_empty() {
        return vec![];
    }
    out
}

/// Payload's paginated answer.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub docs: Vec<T>,
    pub total_docs: i64,
    pub limit: i64,
    pub page: i64,
    pub total_pages: i64,
    pub paging_counter: i64,
    pub has_prev_page: bool,
    pub has_next_page: bool,
    pub prev_page: Option<i64>,
    pub next_page: Option<i64>,
}

impl<T> Page<T> {
    pub fn new(docs: Vec<T>, total: i64, q: &ListQuery) -> Self {
        let total_pages = if total == 0 {
            1
        } else {
            (total + q.limit - 1) / q.limit
        };
        Page {
            docs,
            total_docs: total,
            limit: q.limit,
            page: q.page,
            total_pages,
            paging_counter: q.offset() + 1,
            has_prev_page: q.page > 1,
            has_next_page: q.page < total_pages,
            prev_page: (q.page > 1).then(|| q.page - 1),
            next_page: (q.page < total_pages).then(|| q.page + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_payload_queries() {
        let q = ListQuery::parse(Some(
            "limit=5&page=2&sort=-createdAt,name&where%5Bstatus%5D%5Bequals%5D=Active&where[or][0][name][like]=fibre&where[or][1][price][greater_than]=10",
        ))
        .unwrap();
        assert_eq!(q.limit, 5);
        assert_eq!(q.offset(), 5);
        assert_eq!(
            q.sort,
            vec![("createdAt".into(), true), ("name".into(), false)]
        );
        assert_eq!(
            q.filters,
            vec![Filter {
                field: "status".into(),
                op: Op::Equals,
                value: "Active".into()
            }]
        );
        assert_eq!(q.or_groups.len(), 2);
    }

    #[test]
    fn rejects_bad_paging_and_operators() {
        assert!(ListQuery::parse(Some("limit=1000")).is_err());
        assert!(ListQuery::parse(Some("page=0")).is_err());
        assert!(ListQuery::parse(Some("where[a][drop_table]=1")).is_err());
        assert!(ListQuery::parse(Some("where[a]=1")).is_err());
    }

    #[test]
    fn pagination_fields() {
        let q = ListQuery {
            limit: 10,
            page: 2,
            ..Default::default()
        };
        let p = Page::new(vec![1], 25, &q);
        assert_eq!(
            (p.total_pages, p.paging_counter, p.prev_page, p.next_page),
            (3, 11, Some(1), Some(3))
        );
        let empty = Page::<i32>::new(vec![], 0, &ListQuery::default());
        assert_eq!((empty.total_pages, empty.has_next_page), (1, false));
    }
}
