//! Expenses and their receipts.

use std::sync::Arc;

use async_trait::async_trait;
use isp_platform::collection::{Change, Collection, Field, Hooks, Kind, Operation};
use isp_platform::{ApiError, ApiResult};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;

use super::{money, money_max, EXPENSE_CATEGORIES, FIN};
use crate::storage::Storage;

pub fn expenses(store: Arc<dyn Storage>) -> Collection {
    Collection::new(
        "billing",
        "expenses",
        "expenses",
        "Expense",
        vec![
            Field::new("expenseDate", "expense_date", Kind::Date).required(),
            Field::new("category", "category", Kind::Select(EXPENSE_CATEGORIES)).required(),
            Field::new("vendor", "vendor", Kind::TEXT),
            Field::new("amount", "amount", Kind::Money)
                .required()
                .positive_money(),
            Field::new("description", "description", Kind::TEXT_AREA),
            Field::new("receipt", "receipt", Kind::Json).system(),
        ],
    )
    .access(FIN, FIN, FIN, FIN)
    .hooks(ExpenseHooks { store })
}

struct ExpenseHooks {
    store: Arc<dyn Storage>,
}

#[async_trait]
impl Hooks for ExpenseHooks {
    async fn before_change(&self, _tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if c.data.contains_key("amount") && money(c.data.get("amount"), "amount")? <= Decimal::ZERO
        {
            return Err(ApiError::field("amount", "Must be more than 0 KES."));
        }
        if money(c.data.get("amount"), "amount")? > money_max() {
            return Err(ApiError::field(
                "amount",
                format!("At most {} KES.", money_max()),
            ));
        }
        Ok(())
    }

    /// A deleted expense's receipts (every file under its folder) go only once the
    /// deletion has committed: a rolled-back delete keeps row and file together.
    async fn after_commit(&self, op: Operation, doc: &Value) {
        if op != Operation::Delete {
            return;
        }
        let Some(id) = doc["id"].as_str() else { return };
        if let Err(e) = self.store.delete_prefix(&format!("expenses/{id}")).await {
            tracing::warn!(error = ?e, expense = id, "could not delete a deleted expense's receipt files");
        }
    }
}
