//! Waiting for a condition instead of sleeping for a guessed time: poll with a short, growing
//! pause until the condition holds or a deadline passes.

use std::time::{Duration, Instant};

/// First pause between two looks; doubled after each look up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause: bounds how late a condition that became true is noticed (tests time some).
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Calls `f` until it returns `Some`, for at most `timeout`; `None` if it never did. `f` is
/// called once more at the deadline, so a slow first call still gets a second look.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Whether `cond` became true within `timeout` (see [`poll`]). Use as
/// `assert!(wait_until(t, || ...), "what did not happen: {state}")`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(timeout, || cond().then_some(())).is_some()
}

/// Waits until `value()` has stayed the same for `quiet` (nothing more arrives), for at most
/// `timeout`; returns the last value and whether it settled. For counts that nothing announces
/// the end of (e.g. fire-and-forget copies landing in a log).
pub fn settle<T: PartialEq>(
    timeout: Duration,
    quiet: Duration,
    mut value: impl FnMut() -> T,
) -> (T, bool) {
    let deadline = Instant::now() + timeout;
    let mut last = value();
    let mut since = Instant::now();
    loop {
        let now = Instant::now();
        if now.duration_since(since) >= quiet {
            return (last, true);
        }
        if now >= deadline {
            return (last, false);
        }
        std::thread::sleep(FIRST_PAUSE.max(quiet / 10));
        let v = value();
        if v != last {
            last = v;
            since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_returns_the_first_value_and_gives_up_at_the_deadline() {
        let mut n = 0;
        assert_eq!(
            poll(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        let t0 = Instant::now();
        assert!(!wait_until(Duration::from_millis(30), || false));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(30) && took < Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[test]
    fn settle_waits_until_a_value_stops_changing() {
        let mut n = 0u32;
        let (v, settled) = settle(Duration::from_secs(5), Duration::from_millis(20), || {
            n = (n + 1).min(4);
            n
        });
        assert_eq!((v, settled), (4, true));
        let mut m = 0u32;
        let (_, settled) = settle(Duration::from_millis(40), Duration::from_millis(20), || {
            m += 1;
            m
        });
        assert!(!settled);
    }
}
