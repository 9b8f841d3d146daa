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
use serde_json::json;
use support::image::{LayerBlob, TestImage};
use support::layers::Layer;
use support::registry::Registry;

const LAYERS: usize = 4;
const FILE_BYTES: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A file that gzip shrinks to about half: random bytes alternating with runs of text.
fn file_contents(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(FILE_BYTES);
    while out.len() < FILE_BYTES {
        for _ in 0..512 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.extend(std::iter::repeat_n(b'a' + (state % 26) as u8, 4096));
    }
    out.truncate(FILE_BYTES);
    out
}

/// The nearest-rank percentile `p` (in percent) of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = ((sorted.len() - 1) * p).div_ceil(100);
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, megabytes: f64) {
    samples.sort();
    let p50 = percentile(&samples, 50);
    println!(
        "{name:<28} p50 {:>8.1?}  p95 {:>8.1?}  p99 {:>8.1?}  ({:.0} MB/s at p50, {} runs)",
        p50,
        percentile(&samples, 95),
        percentile(&samples, 99),
        megabytes / p50.as_secs_f64(),
        samples.len()
    );
}

fn main() {
    support::require_tool("mke2fs", "e2fsprogs");
    let total_mb = env_usize("AEGIS_BENCH_MB", 100);
    let runs = env_usize("AEGIS_BENCH_RUNS", 5).max(1);
    let files_per_layer = (total_mb / LAYERS).max(1);

    let mut layers = Vec::new();
    let mut uncompressed = 0usize;
    for l in 0..LAYERS {
        let mut layer = Layer::new();
        for f in 0..files_per_layer {
            let data = file_contents((l * 10_000 + f) as u64);
            uncompressed += data.len();
            layer.file(&format!("data/layer{l}/file{f:04}"), 0o644, 0, 0, &data);
        }
        layers.push(LayerBlob::gzip(layer));
    }
    let image = TestImage::new(layers, json!({"Cmd": ["/bin/true"]}));
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
