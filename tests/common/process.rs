//! Programs a test runs as separate processes — the `switchboard` binary, a `redis-server` of
//! its own — killed when dropped, with their log lines readable as they come; and the one place
//! a `switchboard` command line is put together ([`Switchboard`]).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Api, API_KEY, JWT_SECRET};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// What every node of a test cluster signs its messages with.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-of-32-bytes-or-more";

/// A `switchboard` command line. It starts from nothing the test's own environment could bring
/// in (no `DATABASE_URL`, `REDIS_URL` or `SWITCHBOARD_…` of the shell), on an ephemeral port of
/// the loopback, logging at `info`; each test adds what its scenario is about.
pub struct Switchboard {
    /// A program the binary runs under (`nice -n 5`), if any.
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
}

impl Switchboard {
    pub fn new() -> Self {
        Self {
            wrapper: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
        }
        .env("SWITCHBOARD_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info")
    }

    /// Runs in `dir`, where the server keeps its SQLite file and development keys by default.
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    /// The tests' JWT secret and API key (`common::JWT_SECRET`, `common::API_KEY`).
    pub fn keys(self) -> Self {
        self.env("SWITCHBOARD_JWT_SECRET", JWT_SECRET)
            .env("SWITCHBOARD_API_KEY", API_KEY)
    }

    /// Stores in the database at `url` (a PostgreSQL URL or a SQLite file).
    pub fn database(self, url: impl AsRef<OsStr>) -> Self {
        self.env("DATABASE_URL", url)
    }

    /// A node of the tests' cluster: Redis at `redis_url`, messages signed with
    /// [`CLUSTER_SECRET`].
    pub fn cluster(self, redis_url: &str) -> Self {
        self.env("REDIS_URL", redis_url)
            .env("SWITCHBOARD_CLUSTER_SECRET", CLUSTER_SECRET)
    }

    /// Sets `name` (a later setting of the same name wins).
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets each of `env`, in order.
    pub fn envs(self, env: &[(&str, &str)]) -> Self {
        env.iter()
            .fold(self, |command, (name, value)| command.env(name, value))
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs the binary through `program` with `args` before it (`nice -n 5 switchboard`).
    pub fn under(mut self, program: &str, args: &[&str]) -> Self {
        self.wrapper = std::iter::once(program)
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        self
    }

    /// The command, ready to run.
    pub fn command(&self) -> Command {
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        for (name, _) in std::env::vars_os() {
            let inherited = name.to_string_lossy();
            if inherited.starts_with("SWITCHBOARD_")
                || ["DATABASE_URL", "REDIS_URL", "RUST_LOG"].contains(&&*inherited)
            {
                command.env_remove(&name);
            }
        }
        command.args(&self.args).envs(self.env.iter().cloned());
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }

    /// Starts it, its log read as it comes.
    pub fn spawn(&self) -> Process {
        Process::spawn(self.command())
    }

    /// Starts the server and waits until it says where it listens.
    pub fn serve(&self) -> (Process, Api) {
        let mut process = self.spawn();
        let addr = process.listening_on().parse().unwrap();
        (process, Api { addr })
    }

    /// Runs it to the end (a subcommand, or a server refusing to start).
    pub fn output(&self) -> Output {
        let mut command = self.command();
        command
            .output()
            .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
    }

    /// [`Self::output`] of a run expected to end by itself within `limit` (a start that must be
    /// refused): one still running then is killed and fails the test, rather than hanging it.
    pub fn output_within(&self, limit: Duration) -> Output {
        let mut command = self.command();
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
        let deadline = Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!(
                    "still running after {limit:?}:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }
}

pub struct Process {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Process {
    /// Starts `command` with its stderr (where logs go) read line by line.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The address a Switchboard process says it listens on (`host:port`).
    pub fn listening_on(&mut self) -> String {
        let line = self.wait_for("listening on http://");
        line.split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned()
    }

    /// Reads log lines until one contains `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no log line with {needle:?}; log so far:\n{}",
            self.log.join("\n")
        );
    }

    /// Every log line so far.
    pub fn read_log(&mut self) -> &[String] {
        self.log.extend(self.lines.try_iter());
        &self.log
    }

    /// Sends a signal (`TERM`, `KILL`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the process to exit on its own; fails the test after `wait`.
    pub fn exits_within(&mut self, wait: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {wait:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: what the process said helps to see why.
            self.log.extend(self.lines.try_iter());
            let from = self.log.len().saturating_sub(60);
            eprintln!(
                "--- last log lines of pid {} ---\n{}",
                self.child.id(),
                self.log[from..].join("\n")
            );
        }
    }
}

/// The resident memory of process `pid`, in bytes, from /proc.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}
