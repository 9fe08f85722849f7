//! Hands the system back memory the allocator holds free.
//!
//! glibc's malloc keeps what a thread freed in that thread's arena and gives
//! back only the top of each heap, so a burst (2,000 live streams that open
//! and close) left half of what it took resident long after it was freed.
//! A process of this program therefore looks, now and then, at how much its
//! allocator holds free and, above a small threshold, asks for it to be
//! returned (`malloc_trim`). Live allocations are untouched. Elsewhere than
//! glibc this does nothing: other allocators return memory themselves.

use std::time::Duration;

/// How often the allocator is looked at.
pub const PERIOD: Duration = Duration::from_secs(5);

/// Free memory the allocator may keep for reuse without being asked to
/// return it: about what a quiet process churns through between two looks.
pub const KEEP_FREE: usize = 1024 * 1024;

/// Bytes the allocator holds free (in its arenas' free lists), where known.
pub fn held_free() -> Option<usize> {
    glibc::held_free()
}

/// Returns free memory to the system; whether any was returned.
pub fn trim() -> bool {
    glibc::trim()
}

/// Looks at the allocator every [`PERIOD`] for as long as the process runs
/// and trims it when it holds more than [`KEEP_FREE`] free. Counted in
/// `blog_allocator_trims_total`; `blog_allocator_free_bytes` is what it held
/// at the last look.
pub fn return_freed_memory() {
    if held_free().is_none() {
        return;
    }
    tokio::spawn(async {
        let mut every = tokio::time::interval(PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Walking the arenas takes their locks: off the async workers.
            let looked = tokio::task::spawn_blocking(|| {
                let free = held_free().unwrap_or(0);
                let trimmed = free > KEEP_FREE && trim();
                (free, trimmed)
            })
            .await;
            let Ok((free, trimmed)) = looked else {
                continue;
            };
            metrics::gauge!("blog_allocator_free_bytes").set(free as f64);
            if trimmed {
                metrics::counter!("blog_allocator_trims_total").increment(1);
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    pub fn held_free() -> Option<usize> {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by
        // value; glibc locks each arena while it counts.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks + info.fsmblks)
    }

    pub fn trim() -> bool {
        // SAFETY: malloc_trim takes no pointers; glibc serialises it with
        // every other allocator call.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub fn held_free() -> Option<usize> {
        None
    }

    pub fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_returned() {
        if held_free().is_none() {
            return; // not glibc: nothing to look at
        }
        // Many small blocks (served from the arena, not mapped one by one),
        // with one kept at the end so the heap's top cannot shrink by itself.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 1024]).collect();
        let pin = vec![1u8; 1024];
        drop(blocks);
        let free = held_free().expect("glibc");
        assert!(free > 16 * 1024 * 1024, "20 MB freed are held: {free}");
        assert!(trim(), "and returned when asked");
        drop(pin);
    }
}
