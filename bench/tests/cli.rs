//! The tool's own command line. Its measurements are tested through `switchboard bench` against a
//! real server (the server's `tests/cli.rs`); these tests also make `cargo test` build the binary
//! that `switchboard bench` runs.

use std::process::Command;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
}

#[test]
fn help_names_both_scenarios() {
    let out = tool().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(
        help.contains("--connections") && help.contains("outbox"),
        "{help}"
    );
}

#[test]
fn an_unreachable_server_fails_with_a_reason() {
    let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = tool()
        .current_dir(&dir)
        // Port 9 (discard) on loopback: nothing listens there.
        .args([
            "--url",
            "http://127.0.0.1:9",
            "--connections",
            "1",
            "--events",
            "1",
        ])
        .args(["--timeout", "5s"])
        .env("SWITCHBOARD_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
}
