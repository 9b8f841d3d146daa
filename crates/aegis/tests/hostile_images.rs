//! Issue 19: images come from anywhere, so a crafted layer must be refused with an error that
//! names the limit, run nothing on the host, write nothing outside the image store and keep
//! nothing of the failed import. Driven through `aegis image import --rootfs` against a real
//! daemon with an image store of its own; no VM boots here.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

#[path = "../../aegis-image/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use aegis_proto::api::ImageSummary;
use aegis_testkit::{Daemon, Output};
use support::layers::Layer;

fn daemon() -> Daemon {
    Daemon::start_with_own_images().use_cli(env!("CARGO_BIN_EXE_aegis"))
}

fn image_refs(d: &Daemon) -> Vec<String> {
    let response = d.api("GET", "/v1/images", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let images: Vec<ImageSummary> = serde_json::from_str(&response.body).unwrap();
    images.into_iter().map(|i| i.reference).collect()
}

/// Everything under the store's `tmp/`: a failed import must leave nothing there.
fn store_leftovers(d: &Daemon) -> Vec<PathBuf> {
    std::fs::read_dir(d.home().join("images/tmp"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// Imports `layer` as a root filesystem tagged `tag`; returns what the CLI printed.
fn import(d: &Daemon, dir: &Path, name: &str, layer: Layer, tag: &str) -> Output {
    let tar = dir.join(name);
    std::fs::write(&tar, layer.tar()).unwrap();
    d.aegis([
        "image",
        "import",
        "--rootfs",
        tar.to_str().unwrap(),
        "--tag",
        tag,
    ])
}

/// The refusal: exit 125 (Aegis's own failure), one `error:` line naming the problem, no image
/// and no leftovers.
fn assert_refused(d: &Daemon, out: &Output, tag: &str, says: &str) {
    out.expect_code(125);
    assert!(
        out.stderr.lines().any(|l| l.starts_with("error: ")),
        "{out}"
    );
    assert!(out.stderr.contains(says), "{says:?} missing: {out}");
    assert!(!image_refs(d).iter().any(|t| t.contains(tag)), "{out}");
    assert_eq!(
        store_leftovers(d),
        Vec::<PathBuf>::new(),
        "leftovers after: {out}"
    );
}

#[test]
fn issue_19_crafted_layers_are_refused_and_run_nothing() {
    let d = daemon();
    let dir = tempfile::tempdir().unwrap();

    // The reported host compromise: an xattr name of 16 KiB of spaces and `!cmd #` made
    // debugfs read its batch line in pieces and hand the last one to the shell.
    let marker = dir.path().join("pwned");
    let name = format!(
        "user.{}!touch {} #",
        " ".repeat(16 * 1024),
        marker.display()
    );
    let mut layer = Layer::new();
    layer.file_with_xattrs("f", 0o644, b"x", &[(name.as_str(), b"v")]);
    let out = import(&d, dir.path(), "xattr.tar", layer, "evil/xattr:1");
    assert_refused(&d, &out, "evil/xattr", "its name is longer than 255 bytes");
    assert!(!marker.exists(), "the image's command ran on the host");

    // A namespace the kernel does not know.
    let mut layer = Layer::new();
    layer.file_with_xattrs("f", 0o644, b"x", &[("evil.x", b"v")]);
    let out = import(&d, dir.path(), "ns.tar", layer, "evil/ns:1");
    assert_refused(&d, &out, "evil/ns", "not in a namespace the kernel knows");

    // Whiteouts that name no entry: `.wh...` at the top removed everything beside the
    // staging root (other imports' work included), `dir/.wh..` emptied `dir`.
    let sentinel = d.home().join("images/tmp-sentinel");
    std::fs::write(&sentinel, b"another pull's work").unwrap();
    for (i, whiteout) in [".wh...", "etc/.wh..", ".wh."].into_iter().enumerate() {
        let mut layer = Layer::new();
        layer.file("etc/keep", 0o644, 0, 0, b"k");
        layer.raw_file(whiteout, b"");
        let tag = format!("evil/wh{i}:1");
        let out = import(&d, dir.path(), &format!("wh{i}.tar"), layer, &tag);
        assert_refused(&d, &out, &tag, "which names no entry");
        assert!(out.stderr.contains(whiteout), "{out}");
    }
    assert!(
        sentinel.exists(),
        "a whiteout removed a file outside the import"
    );

    // The store still works after all that.
    let mut layer = Layer::new();
    layer.file("etc/hello", 0o644, 0, 0, b"hi");
    import(&d, dir.path(), "ok.tar", layer, "fine/image:1").expect_success();
    assert!(image_refs(&d).iter().any(|t| t.contains("fine/image")));
}
