//! The CPU scheduling policy of the server's threads, set by the binary before any thread starts
//! (threads inherit their creator's policy); the tests' in-process servers keep their own.
//!
//! The server's threads hand work to one another all the time: actix-server's accept thread
//! gives each connection to an HTTP worker, the worker gives each join to the broker's thread, and
//! the broker's rooms give each event to the worker's sessions. Under Linux's default policy a
//! thread that wakes preempts the one running on its core, so on a busy core each hand-off became a
//! pair of context switches, and the worker was preempted about once per connect. Under
//! `SCHED_BATCH` a thread that wakes waits until the running one sleeps or its time slice ends,
//! and then takes everything handed to it meanwhile: a third less time for a burst of connects.
//! The price: a room's next event waits for the worker to finish writing the last one, so
//! sessions write fewer events at a time (about 8% more CPU per delivery), and a woken thread may
//! wait behind another process busy on its core until that one's slice ends.
//! docs/performance.md has the figures of both policies.

use crate::config::Scheduling;

/// Puts the calling thread, and so every thread it starts afterwards, under `scheduling`.
pub fn apply(scheduling: Scheduling) {
    match scheduling {
        Scheduling::Normal => log::info!("scheduling: left as started"),
        Scheduling::Batch => match batch() {
            Ok(()) => log::info!(
                "scheduling: SCHED_BATCH (SWITCHBOARD_SCHEDULING=normal leaves it as started)"
            ),
            Err(reason) => log::warn!("scheduling: left as started, {reason}"),
        },
    }
}

#[cfg(target_os = "linux")]
fn batch() -> Result<(), String> {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    use thread_priority::ThreadPriority;

    // The library sets a nice value along with the policy, on its own scale of 0–99 (0 is nice
    // 19, 99 is nice -20; 48 is nice 0). Rather than reset a nice value the operator chose, the
    // policy is set only at the default one.
    const NICE_ZERO: u8 = 48;
    match nice() {
        Some(0) => {}
        Some(nice) => return Err(format!("as the server runs at nice {nice}")),
        None => return Err("as the thread's nice value cannot be read".into()),
    }
    let nice_zero = ThreadPriority::Crossplatform(NICE_ZERO.try_into().expect("in 0–99"));
    set_thread_priority_and_policy(
        thread_native_id(),
        nice_zero,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
    )
    .map_err(|e| format!("as SCHED_BATCH cannot be set: {e}"))
}

/// The calling thread's nice value: the 19th field of its `stat`, counted after the command name
/// (which may itself hold spaces and parentheses).
#[cfg(target_os = "linux")]
fn nice() -> Option<i32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(16)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn batch() -> Result<(), String> {
    Err("as SCHED_BATCH is Linux's".into())
}
