//! The ingress proxy through `aegis-harness --stdio` with `AEGIS_HARNESS_INGRESS_PORT=0`: the
//! header and status byte, relaying both ways, half-close, large transfers, many connections,
//! and the control channel staying responsive meanwhile.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use aegis_proto::control::{ingress_header, IngressStatus, INGRESS_KEY_BYTES, INGRESS_MAGIC};
use common::{Harness, WAIT};

/// The key the tests set (the daemon draws a random one per boot).
const KEY: [u8; INGRESS_KEY_BYTES] = [0x5A; INGRESS_KEY_BYTES];

/// A harness with the proxy on a free loopback port and its key set, and that port.
fn start_proxy() -> (Harness, SocketAddr) {
    let (mut h, addr) = start_proxy_without_key();
    h.call_ok("set_ingress_key", serde_json::json!({ "key": KEY }));
    (h, addr)
}

/// A harness with the proxy on a free loopback port, before the host has set a key.
fn start_proxy_without_key() -> (Harness, SocketAddr) {
    let h = Harness::start_with_env(&[("AEGIS_HARNESS_INGRESS_PORT", "0")]);
    let rest = h.console_line("ingress proxy listening on ");
    let addr = rest
        .split_whitespace()
        .next()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("cannot read the proxy address from {rest:?}"));
    assert!(addr.ip().is_loopback(), "{addr}");
    (h, addr)
}

/// Connects to the proxy and sends a raw header; returns the stream (timeouts set).
fn connect_raw(proxy: SocketAddr, header: &[u8]) -> TcpStream {
    let stream = TcpStream::connect(proxy).expect("connect to the proxy");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    (&stream).write_all(header).expect("send the header");
    stream
}

fn header(port: u16) -> Vec<u8> {
    ingress_header(&KEY, port).to_vec()
}

/// Connects through the proxy to guest `port`; returns the stream and the status byte.
fn open(proxy: SocketAddr, port: u16) -> (TcpStream, IngressStatus) {
    let mut stream = connect_raw(proxy, &header(port));
    let mut status = [0u8; 1];
    stream
        .read_exact(&mut status)
        .expect("read the status byte");
    (stream, IngressStatus::from_byte(status[0]))
}

/// Reads everything up to end-of-file.
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read to end-of-file");
    out
}

/// An echo server on 127.0.0.1 (loopback only) handling each connection on its own thread.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// A server for one connection running `serve` on it.
fn one_shot_server<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (u16, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        serve(stream)
    });
    (port, handle)
}

/// A loopback port that nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn connected_then_bytes_echo_through() {
    let (_h, proxy) = start_proxy();
    let port = echo_server();
    let (mut stream, status) = open(proxy, port);
    assert_eq!(status, IngressStatus::Connected);
    stream.write_all(b"hello through the proxy\n").unwrap();
    let mut echoed = [0u8; 24];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello through the proxy\n");
    stream.shutdown(Shutdown::Write).unwrap();
    assert!(read_all(&mut stream).is_empty());
}

#[test]
fn nothing_listening_is_refused_and_closed() {
    let (_h, proxy) = start_proxy();
    let (mut stream, status) = open(proxy, closed_port());
    assert_eq!(status, IngressStatus::Refused);
    assert!(read_all(&mut stream).is_empty());
}

#[test]
fn garbage_header_fails_and_closes() {
    let (_h, proxy) = start_proxy();
    let mut stream = connect_raw(proxy, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(read_all(&mut stream), [IngressStatus::Failed as u8]);
    // The previous protocol version, the proxy itself, a wrong key. (Port 0 is the data
    // service, tested below.)
    let mut wrong_key = KEY;
    wrong_key[0] ^= 0xFF;
    for bad in [
        vec![INGRESS_MAGIC[0], 0x01, 0, 80],
        header(proxy.port()),
        ingress_header(&wrong_key, echo_server()).to_vec(),
    ] {
        let mut stream = connect_raw(proxy, &bad);
        assert_eq!(
            read_all(&mut stream),
            [IngressStatus::Failed as u8],
            "{bad:?}"
        );
    }
}

/// Reads one reply line of the data service.
fn data_reply(stream: &mut TcpStream) -> serde_json::Value {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        stream.read_exact(&mut byte).expect("read a reply line");
        line.push(byte[0]);
    }
    serde_json::from_slice(&line).expect("the reply is JSON")
}

#[test]
fn data_service_feeds_stdin_and_refuses_unknown_execs() {
    let (mut h, proxy) = start_proxy();
    h.call_ok(
        "exec",
        serde_json::json!({ "exec_id": "e", "argv": ["cat"], "stdin": true }),
    );
    let (mut stream, status) = open(proxy, 0);
    assert_eq!(status, IngressStatus::Connected);
    stream
        .write_all(b"{\"op\":\"stdin\",\"exec_id\":\"e\"}\n")
        .unwrap();
    assert_eq!(data_reply(&mut stream), serde_json::json!({ "ok": true }));
    stream.write_all(b"hello").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let last = data_reply(&mut stream);
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["bytes"], 5, "{last}");
    let finished = h.finish(Some("e"));
    assert_eq!(finished.stdout_lines(), ["hello"]);
    assert_eq!(finished.code, 0);

    // Its input was used once; a second connection and an unknown id are both refused.
    for exec_id in ["e", "nobody"] {
        let (mut stream, status) = open(proxy, 0);
        assert_eq!(status, IngressStatus::Connected);
        let request = format!("{{\"op\":\"stdin\",\"exec_id\":\"{exec_id}\"}}\n");
        stream.write_all(request.as_bytes()).unwrap();
        let reply = data_reply(&mut stream);
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("takes no input"),
            "{reply}"
        );
        assert!(read_all(&mut stream).is_empty());
    }
}

/// Reads from `stream` until `text` has come; returns all that came.
fn read_until(stream: &mut TcpStream, text: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(text) {
        let n = stream.read(&mut buf).expect("read the terminal");
        assert!(
            n > 0,
            "the terminal ended before {text:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn data_service_attaches_to_a_terminal() {
    let (mut h, proxy) = start_proxy();
    let script = "stty size; tty; read x; echo got-$x; stty size; exit 3";
    h.call_ok(
        "exec",
        serde_json::json!({
            "exec_id": "t", "argv": ["sh", "-c", script], "tty": {"rows": 30, "cols": 90}
        }),
    );
    let attach = b"{\"op\":\"terminal\",\"exec_id\":\"t\"}\n";
    let (mut stream, _) = open(proxy, 0);
    stream.write_all(attach).unwrap();
    assert_eq!(data_reply(&mut stream), serde_json::json!({ "ok": true }));
    let shown = read_until(&mut stream, "/dev/pts/");
    assert!(shown.contains("30 90"), "{shown:?}");

    // One connection at a time.
    let (mut second, _) = open(proxy, 0);
    second.write_all(attach).unwrap();
    let reply = data_reply(&mut second);
    assert_eq!(reply["ok"], false, "{reply}");

    h.call_ok(
        "resize",
        serde_json::json!({ "exec_id": "t", "rows": 40, "cols": 100 }),
    );
    // The terminal's line discipline turns the carriage return into the end of the line.
    stream.write_all(b"abc\r").unwrap();
    let rest = read_all(&mut stream);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("got-abc"), "{rest:?}");
    assert!(rest.contains("40 100"), "{rest:?}");
    let finished = h.finish(Some("t"));
    assert_eq!(finished.code, 3);
    assert!(
        finished.stdout_lines().is_empty(),
        "a terminal's output is not notified"
    );

    // Resizing what has no terminal is refused.
    h.call_ok(
        "exec",
        serde_json::json!({ "exec_id": "p", "argv": ["sleep", "5"] }),
    );
    let refused = h.call(
        "resize",
        serde_json::json!({ "exec_id": "p", "rows": 10, "cols": 10 }),
    );
    let error = refused.error.expect("resize without a terminal fails");
    assert!(error.message.contains("no terminal"), "{error:?}");
}

/// Sends one framed payload (4-byte big-endian length, then the bytes).
fn frame(stream: &mut TcpStream, payload: &[u8]) {
    stream
        .write_all(&u32::try_from(payload.len()).unwrap().to_be_bytes())
        .unwrap();
    stream.write_all(payload).unwrap();
}

#[test]
fn a_write_is_atomic_and_a_cut_upload_changes_nothing() {
    let (_h, proxy) = start_proxy();
    let dir = std::env::temp_dir().join(format!("aegis-ingress-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("file");
    std::fs::write(&target, "before").unwrap();
    let request = serde_json::json!({"op": "write", "path": target, "mode": 0o600});
    let start = |request: &serde_json::Value| {
        let (mut stream, status) = open(proxy, 0);
        assert_eq!(status, IngressStatus::Connected);
        stream.write_all(format!("{request}\n").as_bytes()).unwrap();
        assert_eq!(data_reply(&mut stream)["ok"], true);
        stream
    };

    // Cut before the end frame: the old content stays, and no temporary file is left.
    let mut cut = start(&request);
    frame(&mut cut, b"half of the new");
    drop(cut);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "before");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["file"], "a temporary file was left behind");

    // Complete: replaced whole, with the mode asked for, and the reply says so.
    let mut whole = start(&request);
    frame(&mut whole, b"after, ");
    frame(&mut whole, b"in two frames");
    frame(&mut whole, b"");
    let last = data_reply(&mut whole);
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["bytes"], 20, "{last}");
    assert_eq!(last["file"]["mode"], 0o600, "{last}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "after, in two frames"
    );

    // A directory cannot be written over; the refusal names the kind.
    let mut refused = {
        let (mut stream, _) = open(proxy, 0);
        let request = serde_json::json!({"op": "write", "path": dir});
        stream.write_all(format!("{request}\n").as_bytes()).unwrap();
        stream
    };
    let reply = data_reply(&mut refused);
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["kind"], "is_dir", "{reply}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn before_the_key_is_set_nothing_is_reached() {
    let (mut h, proxy) = start_proxy_without_key();
    let port = echo_server();
    let (mut stream, status) = open(proxy, port);
    assert_eq!(status, IngressStatus::Failed);
    assert!(read_all(&mut stream).is_empty());
    h.call_ok("set_ingress_key", serde_json::json!({ "key": KEY }));
    let (_stream, status) = open(proxy, port);
    assert_eq!(status, IngressStatus::Connected);
}

#[test]
fn short_header_then_close_gets_failed() {
    let (_h, proxy) = start_proxy();
    let mut stream = connect_raw(proxy, &INGRESS_MAGIC);
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut stream), [IngressStatus::Failed as u8]);
}

#[test]
fn ten_megabytes_round_trip_intact() {
    let (mut h, proxy) = start_proxy();
    let port = echo_server();
    let (stream, status) = open(proxy, port);
    assert_eq!(status, IngressStatus::Connected);
    // A pattern that reveals lost, repeated or reordered blocks, not only a wrong length.
    let mut seed: u32 = 0x2545_F491;
    let data: Vec<u8> = (0..10 * 1024 * 1024 + 7)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed.to_le_bytes()[0]
        })
        .collect();
    let mut writer = stream.try_clone().unwrap();
    let to_send = data.clone();
    let sender = std::thread::spawn(move || {
        for chunk in to_send.chunks(64 * 1024) {
            writer.write_all(chunk).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    // The control channel answers while the transfer runs.
    assert_eq!(h.health().processes, 0);
    let mut reader = stream;
    let echoed = read_all(&mut reader);
    sender.join().unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "the echoed bytes differ from the sent ones");
}

#[test]
fn client_half_close_still_gets_the_reply() {
    let (_h, proxy) = start_proxy();
    // The server reads to end-of-file (which only the client's half-close can produce), then
    // answers and closes.
    let (port, server) = one_shot_server(|mut stream| {
        let received = read_all(&mut stream);
        stream
            .write_all(format!("got {} bytes", received.len()).as_bytes())
            .unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        received.len()
    });
    let (mut stream, status) = open(proxy, port);
    assert_eq!(status, IngressStatus::Connected);
    stream.write_all(&vec![b'x'; 100_000]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut stream), b"got 100000 bytes");
    assert_eq!(server.join().unwrap(), 100_000);
}

#[test]
fn server_half_close_still_takes_the_client_bytes() {
    let (_h, proxy) = start_proxy();
    // The server greets and half-closes at once, then still reads what the client sends.
    let (port, server) = one_shot_server(|mut stream| {
        stream.write_all(b"banner").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        read_all(&mut stream)
    });
    let (mut stream, status) = open(proxy, port);
    assert_eq!(status, IngressStatus::Connected);
    assert_eq!(read_all(&mut stream), b"banner");
    stream.write_all(b"late reply").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), b"late reply");
}

#[test]
fn many_connections_at_once_while_processes_run() {
    let (mut h, proxy) = start_proxy();
    let port = echo_server();
    h.call_ok(
        "exec",
        serde_json::json!({"exec_id": "e", "argv": ["sh", "-c", "echo started; exec sleep 30"]}),
    );
    assert_eq!(h.first_line("e"), "started");
    const N: usize = 300;
    let (tx, rx) = mpsc::channel();
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let (mut stream, status) = open(proxy, port);
                assert_eq!(status, IngressStatus::Connected);
                let message = format!("connection {i}\n");
                stream.write_all(message.as_bytes()).unwrap();
                let mut echoed = vec![0u8; message.len()];
                stream.read_exact(&mut echoed).unwrap();
                assert_eq!(echoed, message.as_bytes());
                // Hold the connection open until every client got this far.
                tx.send(()).unwrap();
                stream
            })
        })
        .collect();
    for _ in 0..N {
        rx.recv_timeout(WAIT).expect("every client is relayed");
    }
    // All N connections are open; the harness still serves the control channel.
    let health = h.health();
    assert_eq!(health.processes, 1);
    for client in clients {
        let mut stream = client.join().unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        assert!(read_all(&mut stream).is_empty());
    }
    h.call_ok("signal", serde_json::json!({"exec_id": "e", "signal": 9}));
    assert_eq!(h.finish(Some("e")).code, 137);
}

#[test]
fn a_silent_host_does_not_hold_up_others() {
    let (_h, proxy) = start_proxy();
    let port = echo_server();
    // Connected but no header: waits for its deadline on its own.
    let silent = TcpStream::connect(proxy).unwrap();
    let (mut stream, status) = open(proxy, port);
    assert_eq!(status, IngressStatus::Connected);
    stream.write_all(b"x").unwrap();
    let mut echoed = [0u8; 1];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"x");
    drop(silent);
    // The proxy is still listening.
    std::thread::sleep(Duration::from_millis(50));
    let (_stream, status) = open(proxy, port);
    assert_eq!(status, IngressStatus::Connected);
}
