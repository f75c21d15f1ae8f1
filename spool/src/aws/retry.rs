//! Retrying S3's `409 ConditionalRequestConflict`: S3 answers it when another
//! conditional write on the same key is in flight. Unlike a 412 (the
//! condition is false: we lost), a 409 says nothing about who wins, so the
//! same request is sent again after a short backoff.

use std::future::Future;
use std::time::Duration;

/// How often a 409 is retried before giving up (as a transient backend error).
pub(crate) const MAX_409_RETRIES: u32 = 8;

/// Backoff before retry `n` (0-based): 10 ms doubling, capped at 1 s, plus
/// up to half of it again as jitter taken from `jitter` in `0..1`.
pub(crate) fn backoff(n: u32, jitter: f64) -> Duration {
    let base = 10u64.saturating_mul(1u64 << n.min(16)).min(1000);
    let extra = (base as f64 * 0.5 * jitter.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(base + extra)
}

/// What one try of a conditional request came to.
#[derive(Debug)]
pub(crate) enum Try<T, E> {
    Done(T),
    /// S3 said 409: try the same request again.
    Conflict409(E),
    Failed(E),
}

/// Runs `attempt` until it is not a 409, at most `MAX_409_RETRIES` retries,
/// sleeping with `sleep` between tries. Returns the last error when the
/// retries run out.
pub(crate) async fn retry_409<T, E, F, Fut, S, SFut>(mut attempt: F, sleep: S) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Try<T, E>>,
    S: Fn(Duration) -> SFut,
    SFut: Future<Output = ()>,
{
    let mut n = 0;
    loop {
        match attempt().await {
            Try::Done(v) => return Ok(v),
            Try::Failed(e) => return Err(e),
            Try::Conflict409(e) => {
                if n >= MAX_409_RETRIES {
                    return Err(e);
                }
                sleep(backoff(n, rand::random::<f64>())).await;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
            .block_on(f)
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(10));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(20));
        assert_eq!(backoff(3, 0.0), Duration::from_millis(80));
        assert_eq!(backoff(20, 0.0), Duration::from_millis(1000));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(15));
        assert_eq!(backoff(30, 5.0), Duration::from_millis(1500));
    }

    #[test]
    fn a_409_is_retried_until_it_succeeds() {
        let calls = Cell::new(0u32);
        let slept = RefCell::new(Vec::new());
        let out: Result<&str, &str> = run(retry_409(
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n <= 3 {
                        Try::Conflict409("409")
                    } else {
                        Try::Done("ok")
                    }
                }
            },
            |d| {
                slept.borrow_mut().push(d);
                async {}
            },
        ));
        assert_eq!(out, Ok("ok"));
        assert_eq!(calls.get(), 4);
        let s = slept.borrow();
        assert_eq!(s.len(), 3);
        assert!(s[0] >= Duration::from_millis(10) && s[2] >= Duration::from_millis(40));
    }

    #[test]
    fn a_412_or_other_error_is_not_retried() {
        let calls = Cell::new(0u32);
        let out: Result<(), &str> = run(retry_409(
            || {
                calls.set(calls.get() + 1);
                async { Try::Failed("412") }
            },
            |_| async {},
        ));
        assert_eq!(out, Err("412"));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn endless_409s_give_up_with_the_last_error() {
        let calls = Cell::new(0u32);
        let out: Result<(), &str> = run(retry_409(
            || {
                calls.set(calls.get() + 1);
                async { Try::Conflict409("409") }
            },
            |_| async {},
        ));
        assert_eq!(out, Err("409"));
        assert_eq!(calls.get(), MAX_409_RETRIES + 1);
    }
}
