// `sqlx::migrate!` embeds migrations/wa_parser at compile time, but cargo does not
// know that: without this, adding a migration file leaves a stale build.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/wa_parser");
}
