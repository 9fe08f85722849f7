//! Threads of their own, at the lowest priority, for connections whose
//! work comes in bursts: live streams.
//!
//! One frame for 2,000 live streams wakes 2,000 connection tasks at once.
//! On the process's own runtime they all queue ahead of whatever request
//! arrives next, and the async scheduler serves them first come, first
//! served: a write that lands during the fan-out waits for all of it. On
//! threads of their own, the operating system's scheduler decides instead;
//! at the idle priority it hands a core to any other thread of the system
//! as soon as that one is ready, and the fan-out takes what is left.
//!
//! The priority is the process's to choose, once, before the first
//! connection: the `blog` binary runs these threads idle (`--live-priority`);
//! a process that runs many systems side by side (the integration tests)
//! leaves them at its own priority, since there every system's streams
//! share these threads against every other system's work.

use std::num::NonZero;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio_util::task::AbortOnDropHandle;

/// How the background threads are scheduled against the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// As every other thread of the process.
    #[default]
    Normal,
    /// Only on a core that nothing else wants (Linux's `SCHED_IDLE`): under
    /// a load that takes every core, live pages are updated late, the
    /// changes gathered, never dropped, rather than a write waiting on them.
    Idle,
}

static PRIORITY: OnceLock<Priority> = OnceLock::new();

/// Sets the background threads' priority, once, before the background
/// runtime's first use; later calls change nothing.
pub fn set_priority(priority: Priority) {
    let _ = PRIORITY.set(priority);
}

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// The background runtime, started on first use and kept for the life of
/// the process; `None` if it could not be started (the caller then serves
/// on its own runtime).
pub fn handle() -> Option<&'static Handle> {
    RUNTIME
        .get_or_init(|| {
            let priority = *PRIORITY.get_or_init(Priority::default);
            build(priority)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no background threads; bursts share the runtime");
                })
                .ok()
        })
        .as_ref()
        .map(Runtime::handle)
}

/// Runs `work` on the background threads (here, if they could not be
/// started) and waits for it; dropping the wait stops the work.
pub async fn run<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let Some(runtime) = handle() else {
        return work.await;
    };
    match AbortOnDropHandle::new(runtime.spawn(work)).await {
        Ok(output) => output,
        // Only a panic ends it otherwise (the runtime lives as long as the
        // process, and the abort is ours, made only if this is dropped):
        // pass it on.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A runtime with a thread per core, each scheduled at `priority`.
fn build(priority: Priority) -> std::io::Result<Runtime> {
    Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, NonZero::get))
        .thread_name("blog-background")
        .on_thread_start(move || schedule_this_thread(priority))
        .enable_all()
        .build()
}

/// Puts the calling thread at `priority` (a thread may always lower its
/// own; it is never raised).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn schedule_this_thread(priority: Priority) {
    if priority == Priority::Idle {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param that outlives the call. On
        // Linux the policy is each thread's own and pid 0 names the calling
        // thread, so only this runtime's threads change.
        let done = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if done != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "background threads keep the process's priority"
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn schedule_this_thread(_priority: Priority) {}

/// The calling thread's scheduling policy, for tests.
#[cfg(all(test, target_os = "linux"))]
#[allow(unsafe_code)]
fn policy() -> i32 {
    // SAFETY: takes no pointers; pid 0 names the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The scheduling policy of a thread of a runtime built at `priority`.
    fn theirs(priority: Priority) -> i32 {
        let runtime = build(priority).expect("the runtime starts");
        let theirs = runtime
            .block_on(runtime.spawn(async { policy() }))
            .expect("ran");
        runtime.shutdown_background();
        theirs
    }

    #[tokio::test]
    async fn work_run_in_the_background_is_stopped_with_its_waiter() {
        let name = run(async { std::thread::current().name().map(str::to_owned) }).await;
        assert_eq!(name.as_deref(), Some("blog-background"));

        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let (dropped, stopped) = tokio::sync::oneshot::channel::<()>();
        let waiter = tokio::spawn(run(async move {
            // Held by the work: dropped (sending nothing) when it stops.
            let _dropped = dropped;
            let _ = started.send(());
            std::future::pending::<()>().await;
        }));
        running.await.expect("the work started");
        waiter.abort();
        assert!(stopped.await.is_err(), "the work stopped with its waiter");
    }

    #[test]
    fn background_threads_run_at_the_priority_the_process_chose() {
        let ours = policy();
        assert_eq!(theirs(Priority::Idle), libc::SCHED_IDLE);
        assert_eq!(theirs(Priority::Normal), ours);
        assert_eq!(policy(), ours, "the caller's own priority is untouched");
    }
}
