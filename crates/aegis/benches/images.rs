//! Images through the daemon and the CLI, as a user meets them (issue 4's benchmark; not a test,
//! nothing is asserted on timings):
//!
//! 1. pull + unpack throughput: `aegis image pull` of an image of about `AEGIS_BENCH_MB` MiB
//!    (default 100; four gzip layers of half-compressible files) from Debian's
//!    `docker-registry` on loopback, into the daemon's store — download, digest checks, layer
//!    unpack and ext4 base image. Between runs `aegis image rm` + `aegis image prune` empty the
//!    store again. `AEGIS_BENCH_PULLS` runs (default 5).
//! 2. cached start: from `aegis instance start --image aegis.local/default:latest -- CMD` to the
//!    first line the command prints, with the image already stored and its base disk built.
//!    `AEGIS_BENCH_STARTS` runs (default 10).
//!
//! Prints p50/p95/p99 and the accelerator. Needs what the end-to-end tests need
//! (`scripts/build.sh`, `./setup.sh`); run with `cargo bench -p aegis --bench images`.
#![allow(clippy::unwrap_used)] // Benchmark code: a failed unwrap is a failed run.

#[path = "../../aegis-image/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;

use aegis_image::{ImageRef, ImageStore};
use aegis_testkit::{env_usize, report_ms, wait_until, Daemon};
use support::image::bench_image;
use support::registry::Registry;

const LAYERS: usize = 4;
const DEFAULT_IMAGE: &str = "aegis.local/default:latest";
/// A pull of 100 MB plus its unpack, or a boot under TCG, with room to spare.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

fn main() {
    let pulls = env_usize("AEGIS_BENCH_PULLS", 5).max(1);
    let starts = env_usize("AEGIS_BENCH_STARTS", 10).max(1);
    let total_mb = env_usize("AEGIS_BENCH_MB", 100);
    let d = Daemon::start_with_own_images().use_cli(env!("CARGO_BIN_EXE_aegis"));
    let status: Value = serde_json::from_str(&d.aegis(["status", "--json"]).stdout)
        .unwrap_or_else(|_| d.api("GET", "/v1/status", None).json());
    println!(
        "accelerator: {} ({})",
        status["accelerator"].as_str().unwrap_or("?"),
        status["accelerator_reason"].as_str().unwrap_or("")
    );

    bench_pull(&d, pulls, total_mb);
    bench_cached_start(&d, starts);
}

fn bench_pull(d: &Daemon, runs: usize, total_mb: usize) {
    let (image, uncompressed) = bench_image(LAYERS, total_mb);
    let compressed: usize = image.layers.iter().map(|l| l.bytes.len()).sum();
    let registry = Registry::start();
    registry.push_image("bench/image", "v1", &image);
    let reference = format!("{}/bench/image:v1", registry.host());
    println!(
        "pull image: {LAYERS} gzip layers, {:.1} MB compressed, {:.1} MB uncompressed",
        compressed as f64 / 1e6,
        uncompressed as f64 / 1e6
    );

    let mut samples = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        d.aegis_with_timeout(["image", "pull", &reference], STEP_TIMEOUT)
            .expect_success();
        samples.push(started.elapsed());
        d.aegis(["image", "rm", &reference]).expect_success();
        d.aegis(["image", "prune"]).expect_success();
    }
    let [p50_ms, ..] = report_ms("aegis image pull", samples);
    let seconds = p50_ms / 1000.0;
    println!(
        "{:<52} {:.1} MB/s compressed, {:.1} MB/s unpacked",
        "aegis image pull, throughput at p50",
        compressed as f64 / 1e6 / seconds,
        uncompressed as f64 / 1e6 / seconds
    );
}

fn bench_cached_start(d: &Daemon, runs: usize) {
    // The default image, imported the way ./setup.sh does, from the set-up home's layer.
    let shared = ImageStore::open(Daemon::shared_images_dir()).unwrap();
    let record = shared
        .lookup(&ImageRef::parse(DEFAULT_IMAGE).unwrap())
        .unwrap()
        .expect("the default image: run ./setup.sh");
    let layer = shared.blob_path(&record.layers[0].digest);
    d.aegis_with_timeout(
        [
            "image",
            "import",
            "--rootfs",
            layer.to_str().unwrap(),
            "--tag",
            DEFAULT_IMAGE,
        ],
        STEP_TIMEOUT,
    )
    .expect_success();

    let mut samples = Vec::new();
    for run in 0..runs {
        let name = format!("bench-{run}");
        let started = Instant::now();
        d.aegis_with_timeout(
            [
                "instance",
                "start",
                "--name",
                &name,
                "--image",
                DEFAULT_IMAGE,
                "--",
                "sh",
                "-c",
                "echo ready; exec sleep 100000",
            ],
            STEP_TIMEOUT,
        )
        .expect_success();
        let path = format!("/v1/instances/{name}/logs");
        wait_until(STEP_TIMEOUT, "the process's first line", || {
            let logs = d.api("GET", &path, None);
            if logs.body.contains("\"line\":\"ready\"") {
                Ok(())
            } else {
                Err(logs.body)
            }
        });
        samples.push(started.elapsed());
        d.aegis(["instance", "delete", &name]).expect_success();
    }
    report_ms("instance start --image (cached)", samples);
}
