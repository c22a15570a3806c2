//! Time, kept outside the state machine: the runtime reads a clock once per batch and
//! passes the value in. Tests of the state machine pass any time they like.
//!
//! The wall clock can step: an NTP correction moves it back or forward at once. The state
//! machine never goes back ([`crate::shard::Engine::apply`] applies every command at the
//! latest time it has seen), and [`StepWatch`] tells the runtime when a reading went back,
//! so that it is logged and counted (`shardcap_clock_steps_backward_total`).

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch. Hold expiry uses
/// absolute times so that it means the same after a restart.
pub trait Clock {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's real-time clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// Watches successive readings of a clock for steps backwards. A step is counted once: the
/// readings after it go forward again from the earlier time (while the state machine's time
/// stands still until they pass the latest time seen).
#[derive(Debug, Default)]
pub struct StepWatch {
    last_ms: Cell<u64>,
}

impl StepWatch {
    /// Takes a reading; answers by how many ms it went back from the previous one, if it did.
    pub fn observe(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.replace(now_ms);
        (now_ms < last).then(|| last - now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::StepWatch;

    #[test]
    fn a_step_backwards_is_seen_once() {
        let watch = StepWatch::default();
        let readings = [(1_000, None), (1_000, None), (1_005, None), (400, Some(605)), (401, None), (2_000, None)];
        for (now, step) in readings {
            assert_eq!(watch.observe(now), step, "reading {now}");
        }
    }
}
