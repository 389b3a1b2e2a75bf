//! Cooperative cancellation of long operations.
//!
//! A [`CancelToken`] is cheap to clone and share between threads. Long
//! operations (a scan of a large tree, a transfer) check it between units of
//! work and stop with [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled)
//! once it is tripped. The Ruby binding trips it when the interpreter asks a
//! blocked call to stop (Ctrl-C, `Thread#raise`, `Timeout`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// A shared flag that asks long work to stop.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that has not been tripped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder of this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) has been called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once the token is tripped, `Ok(())` before.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::cancelled())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let a = CancelToken::new();
        let b = a.clone();
        assert!(a.check().is_ok());
        b.cancel();
        assert!(a.is_cancelled());
        assert_eq!(a.check().unwrap_err().kind(), crate::ErrorKind::Cancelled);
    }
}
