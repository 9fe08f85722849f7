//! Threads of their own, at a lower priority, for connections whose work
//! comes in bursts.
//!
//! One frame for 2,000 live streams wakes 2,000 connection tasks at once.
//! On the process's own runtime they all queue ahead of whatever request
//! arrives next, and the async scheduler serves them first come, first
//! served: a write that lands during the fan-out waits for all of it. On
//! threads of their own, at a lower priority, the operating system's
//! scheduler hands a core to the write as soon as it is ready, and the
//! fan-out takes what the writes leave.

use std::num::NonZero;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

/// How much lower than the rest of the process (a nice value): under
/// contention a background thread gets about a tenth of what a normal one
/// does, and everything when the cores are otherwise idle.
const NICENESS: i32 = 10;

/// The background runtime, started on first use and kept for the life of
/// the process; `None` if it could not be started (the caller then serves
/// on its own runtime).
pub fn handle() -> Option<&'static Handle> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(std::thread::available_parallelism().map_or(1, NonZero::get))
                .thread_name("blog-background")
                .on_thread_start(lower_this_threads_priority)
                .enable_all()
                .build()
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no background threads; bursts share the runtime");
                })
                .ok()
        })
        .as_ref()
        .map(Runtime::handle)
}

/// The calling thread's nice value, raised by [`NICENESS`] (never lowered:
/// an unprivileged process may not).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    // SAFETY: getpriority and setpriority take no pointers. On Linux the
    // nice value is each thread's own, and `who` 0 names the calling
    // thread, so only this runtime's threads are lowered.
    unsafe {
        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (now + NICENESS).min(19));
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}

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

    #[test]
    fn background_threads_run_at_a_lower_priority_than_the_caller() {
        let ours = niceness();
        let handle = handle().expect("the background runtime starts");
        let theirs = std::thread::scope(|scope| {
            scope
                .spawn(|| handle.block_on(handle.spawn(async { niceness() })))
                .join()
                .expect("joined")
                .expect("ran")
        });
        assert_eq!(theirs, (ours + NICENESS).min(19));
        assert_eq!(niceness(), ours, "the caller's own priority is untouched");
    }
}
