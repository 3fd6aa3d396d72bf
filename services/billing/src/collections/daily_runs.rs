//! The daily run's log.

use isp_platform::auth::Roles;
use isp_platform::collection::{Collection, Field, Kind};

use super::{ADMIN, FIN};

/// The daily run's log: read-only, written by the run itself.
pub fn daily_runs() -> Collection {
    const INT: Kind = Kind::Int {
        min: 0,
        max: i32::MAX as i64,
    };
    Collection::new(
        "billing",
        "dailyRuns",
        "daily_runs",
        "Daily run",
        vec![
            Field::new("runDate", "run_date", Kind::Date).system(),
            Field::new("trigger", "trigger", Kind::Select(&["Scheduler", "Manual"])).system(),
            Field::new("invoicesCreated", "invoices_created", INT).system(),
            Field::new("invoicesOverdue", "invoices_overdue", INT).system(),
            Field::new("subscribersSuspended", "subscribers_suspended", INT).system(),
            Field::new("skippedUnknownPlan", "skipped_unknown_plan", INT).system(),
            Field::new("durationMs", "duration_ms", INT).system(),
            Field::new("startedAt", "started_at", Kind::Timestamp).system(),
        ],
    )
    .access(FIN, Roles::NONE, Roles::NONE, Roles::NONE)
    .action("run", ADMIN)
}
