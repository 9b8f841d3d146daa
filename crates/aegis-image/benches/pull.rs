//! Pull + unpack throughput from a real loopback registry (issue 4's benchmark).
//!
//! Pushes an image of about `AEGIS_BENCH_MB` MiB (default 100; four gzip layers of
//! half-compressible files) to Debian's `docker-registry` on loopback, then `AEGIS_BENCH_RUNS`
//! times (default 5) into a fresh store: pulls it (download + verify, no base image) and builds
//! the ext4 base image (unpack + mke2fs + debugfs). Prints p50/p95/p99 and MB/s at p50.
//!
//! Run with `cargo bench -p aegis-image --bench pull`.
#![allow(clippy::unwrap_used)] // Benchmark code: a failed unwrap is a failed run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use aegis_image::{pull, BaseImagePolicy, CredentialSource, ImageRef, ImageStore, PullOptions};
use aegis_testkit::{env_usize, report_ms};
use support::image::bench_image;
use support::registry::Registry;

const LAYERS: usize = 4;

/// Prints p50/p95/p99 of `samples`, then the throughput at p50 of a run that moved `megabytes`.
fn report(name: &str, samples: Vec<Duration>, megabytes: f64) {
    let [p50_ms, ..] = report_ms(name, samples);
    let rate = megabytes / (p50_ms / 1000.0);
    println!("{:<52} {rate:.0} MB/s", format!("{name}, at p50"));
}

fn main() {
    aegis_testkit::tool("mke2fs");
    let total_mb = env_usize("AEGIS_BENCH_MB", 100);
    let runs = env_usize("AEGIS_BENCH_RUNS", 5).max(1);

    let (image, uncompressed) = bench_image(LAYERS, total_mb);
    let compressed: usize = image.layers.iter().map(|l| l.bytes.len()).sum();
    let registry = Registry::start();
    registry.push_image("bench/image", "v1", &image);
    println!(
        "image: {} layers, {:.1} MB compressed, {:.1} MB uncompressed",
        LAYERS,
        compressed as f64 / 1e6,
        uncompressed as f64 / 1e6
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reference = ImageRef::parse(&format!("{}/bench/image:v1", registry.host())).unwrap();
    let options = PullOptions {
        credentials: CredentialSource::Anonymous,
        base_image: BaseImagePolicy::Skip,
        ..PullOptions::default()
    };
    let (mut pulls, mut builds, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        let started = Instant::now();
        let record = runtime
            .block_on(pull(&store, &reference, &options, |_| {}))
            .unwrap();
        let pulled = started.elapsed();
        store.base_image(&record).unwrap();
        let total = started.elapsed();
        pulls.push(pulled);
        builds.push(total - pulled);
        totals.push(total);
    }
    report("pull (download + verify)", pulls, compressed as f64 / 1e6);
    report(
        "base image (unpack + ext4)",
        builds,
        uncompressed as f64 / 1e6,
    );
    report("pull + base image", totals, compressed as f64 / 1e6);
}
