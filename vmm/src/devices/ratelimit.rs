//! A log that says the first few things and then stops: a guest can make a
//! device complain at MMIO speed, and the VMM's stderr must not drown.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

/// A per-device message budget.
#[derive(Debug)]
pub struct RateLimited {
    what: &'static str,
    left: AtomicU32,
}

impl RateLimited {
    /// At most `budget` messages prefixed with `what`, then one saying the
    /// rest are suppressed.
    pub const fn new(what: &'static str, budget: u32) -> Self {
        Self {
            what,
            left: AtomicU32::new(budget),
        }
    }

    /// Logs `args` to stderr if the budget allows; returns whether it did.
    pub fn log(&self, args: fmt::Arguments<'_>) -> bool {
        let before = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .unwrap_or(0);
        match before {
            0 => false,
            1 => {
                eprintln!(
                    "cloister-vmm: {}: {args} (further messages suppressed)",
                    self.what
                );
                true
            }
            _ => {
                eprintln!("cloister-vmm: {}: {args}", self.what);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_runs_out() {
        let log = RateLimited::new("test", 2);
        assert!(log.log(format_args!("one")));
        assert!(log.log(format_args!("two")));
        assert!(!log.log(format_args!("three")));
        assert!(!log.log(format_args!("four")));
    }
}
