//! Build-time switches for the test suite: `cfg(switchboard_postgres)` is set when
//! `SWITCHBOARD_TEST_DATABASE_URL` names a PostgreSQL database, so that the tests that need one
//! (the `postgres` variant of each storage test, the cluster tests) run; without it they are
//! built as ignored, and `cargo test` lists them as such, with the reason, instead of passing
//! without doing anything. The server itself reads nothing here.

const POSTGRES_ENV: &str = "SWITCHBOARD_TEST_DATABASE_URL";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed={POSTGRES_ENV}");
    println!("cargo::rustc-check-cfg=cfg(switchboard_postgres)");
    if std::env::var_os(POSTGRES_ENV).is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=switchboard_postgres");
    }
}
