//! Rebuilds the binary when a migration file is added or changed:
//! `sqlx::migrate!` embeds `migrations/` at compile time but does not tell
//! cargo to watch the folder.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
