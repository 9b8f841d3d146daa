//! Processes and files benchmark (issue 13), in one run against one warm instance:
//!
//! - **file upload and download** of `AEGIS_BENCH_MB` MiB (default 100) of random bytes through
//!   the API (`PUT` and `GET /v1/instances/{id}/files` with `aegis_client`), next to the same
//!   transfer on the raw guest transport the daemon uses for it: the harness's data service,
//!   opened directly through the VM's ingress forward (`run/ingress.port` and `run/ingress.key`,
//!   as `benches/router.rs` opens its "direct" path) with the same request and framing. The
//!   ratio API / raw is what the daemon and its HTTP layer cost (goal ≥ 0.8×).
//! - **`exec -i` round trip**: one line written to the stdin of a running `cat` started with
//!   `stdin: true`, until that line comes back as an output record.
//! - **terminal keystroke echo**: one byte written to a terminal exec (`tty`) running `cat`,
//!   until the guest's line discipline echoes it back.
//!
//! Rates are printed as p50/p95/p99 where p95 and p99 are the slow end. Upload targets a file on
//! the guest's root disk; the write is atomic there (temporary file, fsync, rename) on both
//! paths, so both pay the same disk cost.
//!
//! Needs the release binaries (`scripts/build.sh`) and a set-up `~/.aegis` (`./setup.sh`). Run
//! with `cargo bench -p aegis --bench processes`. Sample sizes: `AEGIS_BENCH_MB`,
//! `AEGIS_BENCH_ROUNDS` (default 5 transfers per path and direction), `AEGIS_BENCH_LINES`
//! (default 200) and `AEGIS_BENCH_KEYS` (default 200).

mod support;

use std::time::{Duration, Instant};

use aegis_client::{Client, WriteOptions};
use aegis_proto::api::{ExecEvent, ExecRequest, InstanceStatus};
use aegis_proto::control::{
    frame_header, ingress_header, DataRequest, IngressStatus, DATA_SERVICE_PORT, INGRESS_KEY_BYTES,
    MAX_FRAME_BYTES,
};
use aegis_testkit::{env_usize, print_load, pseudo_random_bytes, report_ms, report_rate, Daemon};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::{accelerator, ingress_forward, wait_state, BOOT};

/// Deadline of one measured step.
const STEP: Duration = Duration::from_secs(300);

fn main() {
    let mb = env_usize("AEGIS_BENCH_MB", 100);
    let rounds = env_usize("AEGIS_BENCH_ROUNDS", 5);
    let lines = env_usize("AEGIS_BENCH_LINES", 200);
    let keys = env_usize("AEGIS_BENCH_KEYS", 200);

    let d = Daemon::start();
    println!("accelerator: {}", accelerator(&d));
    print_load("at start");
    d.aegis([
        "instance",
        "start",
        "--name",
        "bench-io",
        "--idle-pause",
        "never",
        "--",
        "sleep",
        "infinity",
    ])
    .expect_success();
    let id = wait_state(&d, "bench-io", InstanceStatus::Running, BOOT).id;
    let raw = RawTransport::of(&d, &id);
    let client = Client::new(d.socket());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let data = Bytes::from(pseudo_random_bytes(mb << 20, 13));
    let (mut api_up, mut raw_up, mut api_down, mut raw_down) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        // One unmeasured transfer each way warms the page cache and the connections.
        api_upload(&client, &id, &data).await;
        raw.upload(&data).await;
        for round in 0..rounds {
            // Alternate which path goes first, so that load from elsewhere hits both alike.
            for api_first in [round % 2 == 0, round % 2 != 0] {
                if api_first {
                    api_up.push(rate(mb, api_upload(&client, &id, &data).await));
                    api_down.push(rate(mb, api_download(&client, &id, data.len()).await));
                } else {
                    raw_up.push(rate(mb, raw.upload(&data).await));
                    raw_down.push(rate(mb, raw.download(data.len()).await));
                }
            }
        }
    });
    println!("{mb} MiB transfers, {rounds} per path and direction:");
    let up = [
        report_rate("upload through the API", api_up, "MiB/s"),
        report_rate("upload on the raw data service", raw_up, "MiB/s"),
    ];
    println!("  {}", ratio(up));
    let down = [
        report_rate("download through the API", api_down, "MiB/s"),
        report_rate("download on the raw data service", raw_down, "MiB/s"),
    ];
    println!("  {}", ratio(down));

    let echo = runtime.block_on(stdin_round_trips(&client, &id, lines));
    report_ms("exec -i: one line to cat's stdin and back", echo);
    let keystrokes = runtime.block_on(keystroke_echoes(&client, &id, keys));
    report_ms("terminal: one keystroke to its echo", keystrokes);
    print_load("at end");
}

fn rate(mb: usize, took: Duration) -> f64 {
    mb as f64 / took.as_secs_f64()
}

/// API / raw for rates, where p95 and p99 are the slow end.
fn ratio([api, raw]: [[f64; 3]; 2]) -> String {
    format!(
        "API/raw: p50 {:.2}x  p95 {:.2}x  p99 {:.2}x",
        api[0] / raw[0],
        api[1] / raw[1],
        api[2] / raw[2]
    )
}

const API_PATH: &str = "/root/bench-api.bin";
const RAW_PATH: &str = "/root/bench-raw.bin";

async fn api_upload(client: &Client, id: &str, data: &Bytes) -> Duration {
    let started = Instant::now();
    let written = tokio::time::timeout(
        STEP,
        client.write_file(
            id,
            API_PATH,
            std::io::Cursor::new(data.clone()),
            &WriteOptions::default(),
        ),
    )
    .await
    .expect("the API upload finished in time")
    .expect("the API upload");
    let took = started.elapsed();
    assert_eq!(
        written.size,
        data.len() as u64,
        "the guest has the whole file"
    );
    took
}

async fn api_download(client: &Client, id: &str, expected: usize) -> Duration {
    let started = Instant::now();
    let read = async {
        let mut download = client
            .read_file(id, API_PATH, None, None)
            .await
            .expect("the API download");
        tokio::io::copy(&mut download, &mut tokio::io::sink())
            .await
            .expect("the download's bytes")
    };
    let n = tokio::time::timeout(STEP, read)
        .await
        .expect("the API download finished in time");
    let took = started.elapsed();
    assert_eq!(n, expected as u64, "the whole file came back");
    took
}

/// The harness's data service through the VM's ingress forward, as the daemon opens it.
struct RawTransport {
    port: u16,
    key: [u8; INGRESS_KEY_BYTES],
}

impl RawTransport {
    fn of(d: &Daemon, id: &str) -> RawTransport {
        let (port, key) = ingress_forward(d, id);
        RawTransport { port, key }
    }

    /// A data-service connection that the harness accepted `request` on.
    async fn open(&self, request: &DataRequest) -> BufReader<TcpStream> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to the ingress forward");
        s.set_nodelay(true).expect("TCP_NODELAY");
        s.write_all(&ingress_header(&self.key, DATA_SERVICE_PORT))
            .await
            .expect("ingress header");
        let mut status = [0u8; 1];
        s.read_exact(&mut status).await.expect("ingress answer");
        assert_eq!(
            IngressStatus::from_byte(status[0]),
            IngressStatus::Connected,
            "the ingress proxy did not reach the data service"
        );
        let mut line = serde_json::to_vec(request).expect("a request line");
        line.push(b'\n');
        s.write_all(&line).await.expect("the request line");
        let mut s = BufReader::new(s);
        expect_ok(&mut s).await;
        s
    }

    async fn upload(&self, data: &Bytes) -> Duration {
        let started = Instant::now();
        let transfer = async {
            let mut s = self
                .open(&DataRequest::Write {
                    path: RAW_PATH.to_owned(),
                    parents: false,
                    mode: None,
                    owner: None,
                })
                .await;
            for piece in data.chunks(MAX_FRAME_BYTES) {
                s.write_all(&frame_header(piece.len()))
                    .await
                    .expect("frame");
                s.write_all(piece).await.expect("frame");
            }
            s.write_all(&frame_header(0)).await.expect("end frame");
            expect_ok(&mut s).await;
        };
        tokio::time::timeout(STEP, transfer)
            .await
            .expect("the raw upload finished in time");
        started.elapsed()
    }

    async fn download(&self, expected: usize) -> Duration {
        let started = Instant::now();
        let transfer = async {
            let mut s = self
                .open(&DataRequest::Read {
                    path: RAW_PATH.to_owned(),
                    offset: 0,
                    length: None,
                })
                .await;
            let mut total = 0;
            let mut payload = vec![0u8; MAX_FRAME_BYTES];
            loop {
                let mut header = [0u8; 4];
                s.read_exact(&mut header).await.expect("frame header");
                let len = u32::from_be_bytes(header) as usize;
                if len == 0 {
                    break;
                }
                s.read_exact(&mut payload[..len]).await.expect("frame");
                total += len;
            }
            expect_ok(&mut s).await;
            total
        };
        let total = tokio::time::timeout(STEP, transfer)
            .await
            .expect("the raw download finished in time");
        let took = started.elapsed();
        assert_eq!(total, expected, "the whole file came back");
        took
    }
}

/// Reads one answer line of the data service and checks that it says `ok`.
async fn expect_ok(s: &mut BufReader<TcpStream>) {
    let mut line = String::new();
    s.read_line(&mut line).await.expect("an answer line");
    let answer: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("unreadable answer {line:?}: {e}"));
    assert_eq!(answer["ok"], true, "the data service refused: {line}");
}

/// `n` lines, one at a time, through the stdin of one `cat`: each sample from writing the line
/// until its output record arrived.
async fn stdin_round_trips(client: &Client, id: &str, n: usize) -> Vec<Duration> {
    let request = ExecRequest {
        command: vec!["cat".to_owned()],
        ..ExecRequest::default()
    };
    let (mut events, mut input) = client
        .exec_with_stdin(id, &request)
        .await
        .expect("exec with stdin");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let line = format!("line {i}");
        let started = Instant::now();
        input
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("stdin");
        input.flush().await.expect("stdin");
        let echoed = tokio::time::timeout(STEP, async {
            loop {
                match events.next().await {
                    Some(Ok(ExecEvent::Output(entry))) if entry.line == line => return,
                    Some(Ok(ExecEvent::Output(_) | ExecEvent::Started { .. })) => {}
                    other => panic!("no echo of {line:?}: {other:?}"),
                }
            }
        })
        .await;
        echoed.expect("the line came back in time");
        // The first lines warm the path up.
        if i >= 3 {
            samples.push(started.elapsed());
        }
    }
    input.shutdown().await.expect("end of stdin");
    while let Some(event) = events.next().await {
        if let Ok(ExecEvent::Done { exit_code, .. }) = event {
            assert_eq!(exit_code, 0, "cat ended with its input");
            break;
        }
    }
    samples
}

/// `n` keystrokes, one at a time, into a terminal running `cat`: each sample from writing the
/// byte until the terminal's echo of it arrived.
async fn keystroke_echoes(client: &Client, id: &str, n: usize) -> Vec<Duration> {
    let request = ExecRequest {
        command: vec!["cat".to_owned()],
        tty: Some(Default::default()),
        ..ExecRequest::default()
    };
    let mut terminal = client
        .exec_terminal(id, &request)
        .await
        .expect("exec on a terminal");
    // All keystrokes go on one line: it must fit the terminal's line buffer (4096 bytes).
    assert!(n < 4000, "AEGIS_BENCH_KEYS must be below 4000");
    let mut samples = Vec::with_capacity(n);
    let mut buf = [0u8; 4096];
    for i in 0..n + 3 {
        let key = b"abcdefghijklmnopqrstuvwxyz"[i % 26];
        let started = Instant::now();
        terminal.write_all(&[key]).await.expect("keystroke");
        terminal.flush().await.expect("keystroke");
        tokio::time::timeout(STEP, async {
            loop {
                let got = terminal.read(&mut buf).await.expect("terminal output");
                assert!(got > 0, "the terminal ended before echoing {key}");
                if buf[..got].contains(&key) {
                    return;
                }
            }
        })
        .await
        .expect("the echo came in time");
        if i >= 3 {
            samples.push(started.elapsed());
        }
    }
    // Ctrl-D on an empty line ends cat.
    terminal.write_all(b"\r\x04").await.expect("Ctrl-D");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, terminal.read_to_end(&mut rest)).await;
    samples
}
