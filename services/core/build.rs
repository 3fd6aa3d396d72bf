// `sqlx::migrate!` embeds migrations/core at compile time, but cargo does not know
// that: without this, adding a migration file leaves a stale build that never
// runs it.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/core");
}
