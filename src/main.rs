//! The `switchboard` binary: a thin shim over the library's command line.

/// jemalloc rather than glibc's malloc: on the worker threads glibc grows its heap a little at a
/// time (an `mprotect` call and page faults at each step), which cost a tenth of the server's
/// time while ten thousand clients connected. (docs/performance.md.)
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    switchboard::cli::main()
}
