//! Unpack + ext4 build, checked with debugfs: ownership, modes, setuid, links, devices, xattrs
//! and names with spaces and quotes come out exactly as the layers say, although nothing runs
//! chown or mknod on the host.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod support;

use std::path::Path;

use aegis_image::ext4::build_ext4;
use aegis_image::unpack::Unpacker;
use aegis_image::Digest;
use support::debugfs::Ext4Image;
use support::layers::{Layer, MTIME};

fn build(layers: Vec<(Vec<u8>, &str)>, dir: &Path) -> Ext4Image {
    let mut unpacker = Unpacker::new(&dir.join("staging")).unwrap();
    for (bytes, media_type) in layers {
        let digest = Digest::of_bytes(&bytes);
        unpacker
            .apply_layer(bytes.as_slice(), &digest, media_type)
            .unwrap();
    }
    let tree = unpacker.finish();
    let image = dir.join("root.ext4");
    build_ext4(&tree, &image, &dir.join("work")).unwrap();
    Ext4Image::new(&image)
}

#[test]
fn metadata_from_the_layers_is_applied_exactly() {
    aegis_testkit::tool("mke2fs");
    let dir = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new();
    l1.dir("etc", 0o755, 0, 0)
        .file("etc/deleted-me", 0o644, 0, 0, b"bye")
        .dir("home/user", 0o2750, 1000, 1000)
        .file("home/user/owned by user", 0o640, 1000, 1000, b"mine")
        .file("etc/we\"ird name", 0o600, 7, 8, b"q")
        .file("usr/bin/su", 0o4755, 0, 0, b"#!/bin/sh\n")
        .hardlink("usr/bin/su-link", "usr/bin/su")
        .symlink("bin", "usr/bin")
        .dir("tmp", 0o1777, 0, 0)
        .char_device("dev/null", 0o666, 1, 3)
        .fifo("run/initctl", 0o600)
        .file_with_xattrs(
            "usr/bin/ping",
            0o755,
            b"ping",
            &[("user.note", b"hello"), ("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")],
        )
        .file("opq/old", 0o644, 0, 0, b"old");
    let mut l2 = Layer::new();
    l2.whiteout("etc/deleted-me")
        .opaque("opq")
        .file("opq/new", 0o644, 0, 0, b"new");
    let img = build(
        vec![
            (l1.gzip(), "application/vnd.oci.image.layer.v1.tar+gzip"),
            (l2.zstd(), "application/vnd.oci.image.layer.v1.tar+zstd"),
        ],
        dir.path(),
    );

    assert!(img.stat("/etc/deleted-me").is_none(), "whiteout applied");
    assert_eq!(img.list("/opq"), ["new"], "opaque directory applied");

    let owned = img
        .stat("/home/user/owned by user")
        .expect("file with a space");
    assert_eq!((owned.uid, owned.gid, owned.mode), (1000, 1000, 0o640));
    assert_eq!(img.read("/home/user/owned by user"), b"mine");
    let home = img.stat("/home/user").unwrap();
    assert_eq!(
        (home.uid, home.gid, home.mode, home.kind.as_str()),
        (1000, 1000, 0o2750, "directory")
    );
    let weird = img.stat("/etc/we\"ird name").expect("file with a quote");
    assert_eq!((weird.uid, weird.gid, weird.mode), (7, 8, 0o600));

    let su = img.stat("/usr/bin/su").unwrap();
    assert_eq!(
        (su.uid, su.gid, su.mode, su.kind.as_str()),
        (0, 0, 0o4755, "regular")
    );
    assert_eq!(su.links, 2, "hard link preserved");
    assert_eq!(img.stat("/usr/bin/su-link").unwrap().mode, 0o4755);

    let bin = img.stat("/bin").unwrap();
    assert_eq!(bin.kind, "symlink");
    assert_eq!(bin.link_target.as_deref(), Some("usr/bin"));
    assert_eq!(img.stat("/tmp").unwrap().mode, 0o1777);

    let null = img.stat("/dev/null").unwrap();
    assert_eq!(
        (null.kind.as_str(), null.mode, null.device),
        ("character special", 0o666, Some((1, 3)))
    );
    let fifo = img.stat("/run/initctl").unwrap();
    assert_eq!((fifo.kind.as_str(), fifo.mode), ("FIFO", 0o600));

    let note = img.xattr("/usr/bin/ping", "user.note").unwrap();
    assert!(String::from_utf8_lossy(&note).contains("hello"), "{note:?}");
    assert!(img.xattr("/usr/bin/ping", "security.capability").is_some());

    // Implicit parents and the root are root-owned 0755; the root directory keeps its mtime.
    let root = img.stat("/").unwrap();
    assert_eq!((root.uid, root.gid, root.mode), (0, 0, 0o755));
    let usr = img.stat("/usr").unwrap();
    assert_eq!((usr.uid, usr.gid, usr.mode), (0, 0, 0o755));
    let _ = MTIME;
}

#[test]
fn path_escapes_are_contained_in_the_image() {
    aegis_testkit::tool("mke2fs");
    let dir = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new();
    l1.raw_file("/abs-file", b"absolute")
        .symlink("escape", victim.path().to_str().unwrap())
        .symlink("up", "../../../..");
    let mut l2 = Layer::new();
    l2.file("escape/planted", 0o644, 0, 0, b"x")
        .file("up/via-dotdot", 0o644, 0, 0, b"y");
    let img = build(
        vec![
            (l1.tar(), "application/vnd.oci.image.layer.v1.tar"),
            (l2.tar(), "application/vnd.oci.image.layer.v1.tar"),
        ],
        dir.path(),
    );
    assert_eq!(img.read("/abs-file"), b"absolute");
    assert!(
        !victim.path().join("planted").exists(),
        "wrote outside the root"
    );
    let inside = format!("{}/planted", victim.path().display());
    assert!(
        img.stat(&inside).is_some(),
        "the write landed inside the image"
    );
    assert!(img.stat("/via-dotdot").is_some());

    let mut bad = Layer::new();
    bad.raw_file("../outside", b"x");
    let mut unpacker = Unpacker::new(&dir.path().join("staging2")).unwrap();
    let err = unpacker
        .apply_layer(
            bad.tar().as_slice(),
            &Digest::of_bytes(b"bad"),
            "application/vnd.oci.image.layer.v1.tar",
        )
        .unwrap_err();
    assert!(err.to_string().contains("'..' component"), "{err}");
    assert!(!dir.path().join("outside").exists());
}

/// The daemon runs as an ordinary user. When these tests run as root, run the metadata test
/// again as `nobody` (uid 65534) so the whole unpack + mke2fs + debugfs flow is proven without
/// privileges; when they already run unprivileged, the test above is that proof.
#[test]
fn the_build_works_without_root() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let setpriv = aegis_testkit::tool("setpriv");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "metadata_from_the_layers_is_applied_exactly",
            "--test-threads=1",
        ])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "unprivileged run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
