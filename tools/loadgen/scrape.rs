//! Scrapes a metrics URL at a fixed interval while the load runs, on a thread of its own,
//! to measure what scraping costs the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running scraper.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

impl Scraper {
    /// Starts scraping `url` every `interval` until [`Scraper::stop`].
    pub fn start(url: String, interval: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().into();
            let (mut ok, mut failed) = (0, 0);
            let mut next = Instant::now();
            while !stopping.load(Ordering::Relaxed) {
                let good = agent.get(&url).call().and_then(|mut r| r.body_mut().read_to_string()).is_ok();
                if good {
                    ok += 1;
                } else {
                    failed += 1;
                }
                // Paced on a fixed schedule, like a Prometheus scrape interval.
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (ok, failed)
        });
        Scraper { stop, thread }
    }

    /// Stops scraping; answers the scrapes that succeeded and those that failed.
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}
