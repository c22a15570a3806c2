//! The small harness every microbenchmark (engine, protocol, wal) shares: full mode under `cargo bench` (the `--bench`
//! argument), a tiny checking mode under `cargo test`, an optional name filter, and one
//! aligned line per case.

use std::time::{Duration, Instant};

/// Measured time per case in full mode (setup excluded).
const TARGET: Duration = Duration::from_secs(2);
/// Wall-clock bound per case in full mode, setup included.
const WALL_MAX: Duration = Duration::from_secs(12);
/// Fewest measured samples per case in full mode.
const SAMPLES_MIN: usize = 3;

/// Iterations per sample in each mode.
#[derive(Clone, Copy)]
pub struct Sizes {
    /// `cargo test`: one sample.
    pub tiny: u64,
    /// `cargo bench`: every sample.
    pub full: u64,
}

/// Runs cases in the mode and with the filter the command line asks for.
pub struct Bench {
    full: bool,
    filter: Option<String>,
    ran: usize,
}

impl Bench {
    /// `--bench` (passed by `cargo bench`) selects the full mode; the first argument that
    /// is not a flag filters cases by substring. Other flags are ignored.
    pub fn from_args(suite: &str) -> Bench {
        let mut full = false;
        let mut filter = None;
        for arg in std::env::args().skip(1) {
            if arg == "--bench" {
                full = true;
            } else if !arg.starts_with('-') && filter.is_none() {
                filter = Some(arg);
            }
        }
        if full {
            let build = if cfg!(debug_assertions) {
                "WARNING: debug assertions are on, so this is probably an unoptimized build; the numbers mean little"
            } else {
                "optimized build, debug assertions off"
            };
            println!("{suite} benchmarks: {build}");
            println!(
                "each case: 1 warm-up sample, then samples until {} s measured; ns/op of the median sample",
                TARGET.as_secs()
            );
            println!("{:<24} {:>10} {:>9} {:>12}   fastest..slowest sample", "case", "ns/op", "Mops/s", "iterations");
        } else {
            println!(
                "{suite} benchmarks, tiny mode: checks only, not measurements (`cargo bench --bench {suite}` measures)"
            );
            println!("{:<24} {:>10} {:>9} {:>12}", "case", "ns/op", "Mops/s", "iterations");
        }
        Bench { full, filter, ran: 0 }
    }

    /// Runs case `name`. `sample(n)` builds its state, runs `n` iterations in a timed
    /// region, checks the outcomes and returns the time of the timed region. Full mode
    /// reports the median sample (robust to a noisy neighbour), tiny mode its one sample.
    pub fn case(&mut self, name: &str, sizes: Sizes, mut sample: impl FnMut(u64) -> Duration) {
        if self.filter.as_deref().is_some_and(|f| !name.contains(f)) {
            return;
        }
        self.ran += 1;
        let n = if self.full { sizes.full } else { sizes.tiny };
        let mut per_op_ns = Vec::new();
        if self.full {
            sample(n);
            let start = Instant::now();
            let mut measured = Duration::ZERO;
            while per_op_ns.len() < SAMPLES_MIN || (measured < TARGET && start.elapsed() < WALL_MAX) {
                let elapsed = sample(n);
                measured += elapsed;
                per_op_ns.push(elapsed.as_nanos() as f64 / n as f64);
            }
        } else {
            per_op_ns.push(sample(n).as_nanos() as f64 / n as f64);
        }
        per_op_ns.sort_by(f64::total_cmp);
        let ns = per_op_ns[per_op_ns.len() / 2];
        let iterations = n * per_op_ns.len() as u64;
        print!("{name:<24} {ns:>10.2} {:>9.2} {iterations:>12}", 1e3 / ns);
        if self.full {
            print!("   {:.2}..{:.2}", per_op_ns[0], per_op_ns[per_op_ns.len() - 1]);
        }
        println!();
    }

    /// Says so if the filter matched no case (`cargo bench <filter>` runs every suite).
    pub fn finish(self) {
        if self.ran == 0 {
            println!("no case matches {:?}", self.filter.unwrap_or_default());
        }
    }
}
