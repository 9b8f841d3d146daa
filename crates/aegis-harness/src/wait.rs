//! Bounded polling for things the kernel creates asynchronously (device nodes, network
//! interfaces, virtio ports), used by the synchronous init phases before any async code runs.
//!
//! Probes are cheap `stat`s; polling every few milliseconds costs nothing next to a boot, and
//! the deadline guarantees a missing device becomes an error instead of a hang.

use std::path::Path;
use std::time::{Duration, Instant};

/// Calls `probe` every `interval` until it returns `Some` or `timeout` has passed. The probe
/// runs at least once, and once more at the deadline.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

/// Waits until `path` exists.
pub fn wait_for_path(path: &Path, timeout: Duration, interval: Duration) -> bool {
    poll_until(timeout, interval, || path.exists().then_some(())).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_probe_succeeds() {
        let mut calls = 0;
        let found = poll_until(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(found, Some(3));
    }

    #[test]
    fn gives_up_at_the_deadline() {
        let started = Instant::now();
        let found: Option<()> =
            poll_until(Duration::from_millis(30), Duration::from_millis(5), || None);
        assert_eq!(found, None);
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(!wait_for_path(
            Path::new("/no/such/device"),
            Duration::from_millis(10),
            Duration::from_millis(5)
        ));
    }
}
