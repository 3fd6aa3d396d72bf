// `sqlx::migrate!` embeds ./migrations (the event tables every service applies) at
// compile time, but cargo does not know that: without this, adding a migration
// file leaves a stale build that never runs it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
