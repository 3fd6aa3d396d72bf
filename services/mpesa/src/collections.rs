//! What staff read: the Daraja transaction log (every request and callback with
//! its raw payload), the STK requests with their outcome (a failed prompt's reason
//! is here), and the payments credited (one per receipt). All read-only: written
//! by the service alone.

use std::sync::Arc;

use isp_platform::auth::{Role, Roles};
use isp_platform::collection::{Collection, Field, Kind};

use crate::status::{CommissionStatus, StkStatus};

pub const FIN: Roles = Roles::of(&[Role::Admin, Role::BillingManager]);
pub const ADMIN: Roles = Roles::of(&[Role::Admin]);

pub struct Collections {
    pub transactions: Arc<Collection>,
    pub stk_requests: Arc<Collection>,
    pub payments: Arc<Collection>,
    pub commissions: Arc<Collection>,
}

impl Collections {
    pub fn new() -> Self {
        Self {
            transactions: Arc::new(transactions()),
            stk_requests: Arc::new(stk_requests()),
            payments: Arc::new(payments()),
            commissions: Arc::new(commissions()),
        }
    }
}

const KINDS: &[&str] = &[
    "STK Push",
    "STK Callback",
    "STK Query",
    "C2B Register",
    "C2B Validation",
    "C2B Confirmation",
    "Pull Transactions",
    "B2C Request",
    "B2C Result",
    "B2C Timeout",
    "Transaction Status",
    "Transaction Status Result",
];

fn transactions() -> Collection {
    Collection::new(
        "mpesa",
        "transactions",
        "transactions",
        "Daraja transaction",
        vec![
            Field::new("kind", "kind", Kind::Select(KINDS)).system(),
            Field::new("merchantRequestId", "merchant_request_id", Kind::TEXT).system(),
            Field::new("checkoutRequestId", "checkout_request_id", Kind::TEXT).system(),
            Field::new("conversationId", "conversation_id", Kind::TEXT).system(),
            Field::new(
                "originatorConversationId",
                "originator_conversation_id",
                Kind::TEXT,
            )
            .system(),
            Field::new("receipt", "receipt", Kind::TEXT).system(),
            Field::new("amount", "amount", Kind::Money).system(),
            Field::new("phone", "phone", Kind::TEXT).system(),
            Field::new("accountReference", "account_reference", Kind::TEXT).system(),
            Field::new("invoice", "invoice_id", Kind::Relation).system(),
            Field::new("status", "status", Kind::TEXT).system(),
            Field::new("resultCode", "result_code", Kind::TEXT).system(),
            Field::new("resultDescription", "result_description", Kind::TEXT).system(),
            Field::new("raw", "raw", Kind::Json).system(),
        ],
    )
    .access(FIN, Roles::NONE, Roles::NONE, Roles::NONE)
}

fn stk_requests() -> Collection {
    Collection::new(
        "mpesa",
        "stkRequests",
        "stk_requests",
        "STK request",
        vec![
            Field::new("invoice", "invoice_id", Kind::Relation).system(),
            Field::new("subscriber", "subscriber_id", Kind::Relation).system(),
            Field::new("accountReference", "account_reference", Kind::TEXT).system(),
            Field::new("phone", "phone", Kind::TEXT).system(),
            Field::new("amount", "amount", Kind::Money).system(),
            Field::new(
                "trigger",
                "trigger",
                Kind::Select(&["Staff", "Service", "Invoice Created", "Invoice Overdue"]),
            )
            .system(),
            Field::new("status", "status", Kind::Select(StkStatus::ALL)).system(),
            Field::new("merchantRequestId", "merchant_request_id", Kind::TEXT).system(),
            Field::new("checkoutRequestId", "checkout_request_id", Kind::TEXT).system(),
            Field::new("receipt", "receipt", Kind::TEXT).system(),
            Field::new("resultCode", "result_code", Kind::TEXT).system(),
            Field::new("resultDescription", "result_description", Kind::TEXT).system(),
            Field::new(
                "settledBy",
                "settled_by",
                Kind::Select(&["Callback", "Query", "Pull Transactions"]),
            )
            .system(),
            Field::new(
                "queries",
                "queries",
                Kind::Int {
                    min: 0,
                    max: i32::MAX as i64,
                },
            )
            .system(),
            Field::new("requestedBy", "requested_by", Kind::TEXT).system(),
        ],
    )
    .access(FIN, Roles::NONE, Roles::NONE, Roles::NONE)
}

fn payments() -> Collection {
    Collection::new(
        "mpesa",
        "payments",
        "payments",
        "M-Pesa payment",
        vec![
            Field::new("receipt", "receipt", Kind::TEXT).system(),
            Field::new("amount", "amount", Kind::Money).system(),
            Field::new("phone", "phone", Kind::TEXT).system(),
            Field::new("phoneSha256", "phone_sha256", Kind::TEXT).system(),
            Field::new("accountReference", "account_reference", Kind::TEXT).system(),
            Field::new("billRefNumber", "bill_ref_number", Kind::TEXT).system(),
            Field::new("subscriber", "subscriber_id", Kind::Relation).system(),
            Field::new("invoice", "invoice_id", Kind::Relation).system(),
            Field::new(
                "suggestedSubscriber",
                "suggested_subscriber_id",
                Kind::Relation,
            )
            .system(),
            Field::new("source", "source", Kind::Select(&["stk", "c2b"])).system(),
            Field::new(
                "foundBy",
                "found_by",
                Kind::Select(&["STK Callback", "C2B Confirmation", "Pull Transactions"]),
            )
            .system(),
            Field::new("transactionTime", "transaction_time", Kind::Timestamp).system(),
        ],
    )
    .access(FIN, Roles::NONE, Roles::NONE, Roles::NONE)
}

/// Partner commissions, one per converted referral (see `commissions`).
fn commissions() -> Collection {
    const INT: Kind = Kind::Int {
        min: 0,
        max: i32::MAX as i64,
    };
    Collection::new(
        "mpesa",
        "commissions",
        "commissions",
        "Commission",
        vec![
            Field::new("lead", "lead_id", Kind::Relation).system(),
            Field::new("partner", "partner_id", Kind::Relation).system(),
            Field::new("subscriber", "subscriber_id", Kind::Relation).system(),
            Field::new("invoice", "invoice_id", Kind::Relation).system(),
            Field::new("invoiceAmount", "invoice_amount", Kind::Money).system(),
            Field::new("commissionRate", "commission_rate", Kind::Money).system(),
            Field::new("basis", "basis", Kind::Select(&["Flat", "Percent"])).system(),
            Field::new("amount", "amount", Kind::Money).system(),
            Field::new("payoutAmount", "payout_amount", Kind::Money).system(),
            Field::new("status", "status", Kind::Select(CommissionStatus::ALL)).system(),
            Field::new("phone", "phone", Kind::TEXT).system(),
            Field::new("attempts", "attempts", INT).system(),
            Field::new(
                "originatorConversationId",
                "originator_conversation_id",
                Kind::TEXT,
            )
            .system(),
            Field::new("conversationId", "conversation_id", Kind::TEXT).system(),
            Field::new("receipt", "receipt", Kind::TEXT).system(),
            Field::new("paidAmount", "paid_amount", Kind::Money).system(),
            Field::new("resultCode", "result_code", Kind::TEXT).system(),
            Field::new("resultDescription", "result_description", Kind::TEXT).system(),
            Field::new("approvedBy", "approved_by", Kind::TEXT).system(),
            Field::new("approvedAt", "approved_at", Kind::Timestamp).system(),
            Field::new("sentAt", "sent_at", Kind::Timestamp).system(),
            Field::new("paidAt", "paid_at", Kind::Timestamp).system(),
            Field::new("statusQueries", "status_queries", INT).system(),
        ],
    )
    .access(FIN, Roles::NONE, Roles::NONE, Roles::NONE)
    .action("approve", ADMIN)
    .action("retry", ADMIN)
}
