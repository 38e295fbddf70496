//! A stop request from outside the process: SIGTERM (Slurm's preemption or time limit, `kill`)
//! or SIGINT (Ctrl-C). The CLI registers those signals onto [`flag`]; the trainer checks it at
//! every optimiser step, writes `last.ckpt` where the run stands and returns
//! [`crate::TrainError::Interrupted`], so the same command continues the run. The library
//! installs no signal handler itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

static SIGNAL: LazyLock<Arc<AtomicUsize>> = LazyLock::new(|| Arc::new(AtomicUsize::new(0)));

/// The flag a signal handler sets to the signal's number (0: no request).
pub fn flag() -> Arc<AtomicUsize> {
    SIGNAL.clone()
}

/// The signal that asked this process to stop, if any.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}

/// Asks the running training to stop as `signal` would (tests, a parent process).
pub fn request(signal: i32) {
    SIGNAL.store(signal.max(1) as usize, Ordering::SeqCst);
}

/// Withdraws a request (tests that go on in the same process).
pub fn clear() {
    SIGNAL.store(0, Ordering::SeqCst);
}

/// A signal's usual name (`SIGTERM`), or its number.
pub fn signal_name(signal: i32) -> String {
    match signal {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        10 => "SIGUSR1".into(),
        12 => "SIGUSR2".into(),
        s => format!("signal {s}"),
    }
}
