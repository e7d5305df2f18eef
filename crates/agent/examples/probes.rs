//! Runs many HTTP probes the way the supervisor does (one loop per probe:
//! check, sleep the interval) against local endpoints, for `bench/probes`.
//!
//! Usage: probes <count> <interval-ms> <seconds> <port>[,<port>…]
//! Prints one line: `probes=N checks=C failures=F`; the script measures
//! this process's CPU and memory from outside.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem_agent::probe::Prober;
use tandem_core::protocol::{ProbeKind, ProbeSpec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: probes <count> <interval-ms> <seconds> <port>[,<port>...]");
        std::process::exit(2)
    };
    if args.len() != 5 {
        usage();
    }
    let count: usize = args[1].parse().unwrap_or_else(|_| usage());
    let interval = Duration::from_millis(args[2].parse().unwrap_or_else(|_| usage()));
    let seconds: u64 = args[3].parse().unwrap_or_else(|_| usage());
    let ports: Vec<u16> = args[4]
        .split(',')
        .map(|p| p.parse().unwrap_or_else(|_| usage()))
        .collect();
    // One worker thread, as the agent's probes share its runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let checks = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let prober = Prober::default();
        for i in 0..count {
            let spec = ProbeSpec {
                kind: ProbeKind::Http {
                    path: format!("/health/{i}"),
                    status: (200, 399),
                },
                interval_ms: interval.as_millis() as u64,
                timeout_ms: 2_000,
                failures: 3,
            };
            let port = ports[i % ports.len()];
            let (prober, checks, failures) = (prober.clone(), checks.clone(), failures.clone());
            // Spread the first checks over one interval, as instances start apart.
            let offset = interval.mul_f64(i as f64 / count as f64);
            tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                loop {
                    if prober.check(&spec, port, "/", &|_| Ok(())).await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    checks.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(interval).await;
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    });
    println!(
        "probes={count} checks={} failures={}",
        checks.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
}
