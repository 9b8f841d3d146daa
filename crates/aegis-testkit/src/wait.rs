//! Polling with a deadline: tests wait for a condition, never for a fixed time.

use std::time::{Duration, Instant};

/// Between two probes. Short enough not to slow tests, long enough not to load a 2-core machine.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `probe` until it returns `Ok`, at most for `timeout`; returns the value, or the last
/// observation (`Err`) when time ran out.
///
/// # Errors
/// The last `Err` of `probe` after the deadline.
pub fn try_wait_until<T, E>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(PROBE_INTERVAL),
        }
    }
}

/// Like [`try_wait_until`], but panics naming `what` and the last observation on timeout.
pub fn wait_until<T, E: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    probe: impl FnMut() -> Result<T, E>,
) -> T {
    match try_wait_until(timeout, probe) {
        Ok(value) => value,
        Err(last) => {
            panic!("timed out after {timeout:?} waiting for {what}; last observed: {last:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_success_or_the_last_failure() {
        let mut n = 0;
        let got = try_wait_until(Duration::from_secs(5), || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(n)
            }
        });
        assert_eq!(got, Ok(3));
        let last = try_wait_until(Duration::ZERO, || Err::<(), _>("never"));
        assert_eq!(last, Err("never"));
    }
}
