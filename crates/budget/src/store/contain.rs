//! Containing redb's panics on a damaged file.
//!
//! redb trusts the pages it reads: a file altered behind its back can make a read panic
//! ("entered unreachable code") instead of returning an error. A damaged spend file is
//! user input, so every redb call the store makes runs through [`contain`], which turns
//! such a panic into [`redb::Error::Corrupted`]. A panic hook, chained in front of the
//! one the process had, keeps a contained panic from printing a backtrace-like message
//! above the clear error the caller reports; every other panic reaches the previous hook
//! unchanged.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`contain`], whose panics are reported as errors.
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

static QUIET_HOOK: Once = Once::new();

fn install_quiet_hook() {
    QUIET_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, a redb operation, and reports a panic inside it as a corrupted file.
pub(super) fn contain<T, E: From<redb::Error>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    install_quiet_hook();
    let outer = CONTAINING.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(outer));
    result.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        Err(E::from(redb::Error::Corrupted(format!(
            "redb failed reading it: {what}"
        ))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_corruption_error_and_the_flag_is_restored() {
        let result: Result<(), redb::Error> = contain(|| panic!("entered unreachable code"));
        match result {
            Err(redb::Error::Corrupted(message)) => {
                assert!(message.contains("entered unreachable code"), "{message}");
            }
            other => panic!("expected Corrupted, got {other:?}"),
        }
        assert!(!CONTAINING.with(Cell::get));
        assert_eq!(contain(|| Ok::<_, redb::Error>(7)).ok(), Some(7));
    }
}
