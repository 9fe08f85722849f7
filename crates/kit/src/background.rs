//! Threads of their own, optionally at a lower priority, for connections
//! whose work comes in bursts.
//!
//! One frame for 2,000 live streams wakes 2,000 connection tasks at once.
//! On the process's own runtime they all queue ahead of whatever request
//! arrives next, and the async scheduler serves them first come, first
//! served: a write that lands during the fan-out waits for all of it. On
//! threads of their own, at a lower priority, the operating system's
//! scheduler hands a core to the write as soon as it is ready, and the
//! fan-out takes what the writes leave.
//!
//! The priority is the process's to choose, once, before the first
//! connection: the `blog` binary lowers these threads (`--readers-niceness`,
//! 10 by default); a process that runs many systems side by side (the
//! integration tests) leaves them at its own priority, since there every
//! system's readers share these threads against every other's writers.

use std::num::NonZero;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

/// How much lower than the rest of the process the background threads run
/// (a nice value), set once by [`lower_priority_by`]; 0 until then.
static NICENESS: OnceLock<u8> = OnceLock::new();

/// Runs the background threads `niceness` lower than the rest of the
/// process (0–19; at 10 a background thread gets about a tenth of what a
/// normal one does under contention, and everything when the cores are
/// otherwise idle). Takes effect only before the background runtime's first
/// use; says whether it did.
pub fn lower_priority_by(niceness: u8) -> bool {
    NICENESS.set(niceness.min(19)).is_ok()
}

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// The background runtime, started on first use and kept for the life of
/// the process; `None` if it could not be started (the caller then serves
/// on its own runtime).
pub fn handle() -> Option<&'static Handle> {
    RUNTIME
        .get_or_init(|| {
            let niceness = *NICENESS.get_or_init(|| 0);
            build(niceness)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no background threads; bursts share the runtime");
                })
                .ok()
        })
        .as_ref()
        .map(Runtime::handle)
}

/// A runtime with a thread per core, each `niceness` below its creator.
fn build(niceness: u8) -> std::io::Result<Runtime> {
    Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, NonZero::get))
        .thread_name("blog-background")
        .on_thread_start(move || lower_this_threads_priority(niceness))
        .enable_all()
        .build()
}

/// The calling thread's nice value, raised by `by` (never lowered: an
/// unprivileged process may not).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_this_threads_priority(by: u8) {
    if by == 0 {
        return;
    }
    // SAFETY: getpriority and setpriority take no pointers. On Linux the
    // nice value is each thread's own, and `who` 0 names the calling
    // thread, so only this runtime's threads are lowered.
    unsafe {
        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (now + i32::from(by)).min(19));
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority(_by: u8) {}

/// The calling thread's nice value, for tests.
#[cfg(all(test, target_os = "linux"))]
#[allow(unsafe_code)]
fn niceness() -> i32 {
    // SAFETY: as above; errno is not consulted since -1 is not expected here.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of a thread of a runtime built `by` lower.
    fn theirs(by: u8) -> i32 {
        let runtime = build(by).expect("the runtime starts");
        let theirs = runtime
            .block_on(runtime.spawn(async { niceness() }))
            .expect("ran");
        runtime.shutdown_background();
        theirs
    }

    #[test]
    fn background_threads_run_as_much_lower_as_the_process_chose() {
        let ours = niceness();
        assert_eq!(theirs(10), (ours + 10).min(19));
        assert_eq!(theirs(0), ours, "0 keeps the process's own priority");
        assert_eq!(niceness(), ours, "the caller's own priority is untouched");
    }
}
