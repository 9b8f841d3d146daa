//! Crashes and full disks (README, "Reliability"): a corrupt `aegis.db` stops `aegisd` at start
//! with an error naming the file and the way out, and is left as it was; a disk that fills
//! during `secret set`, an image pull or a kit install fails that request with an error naming
//! the full disk, keeps what was stored before, leaves nothing half-written, and the daemon goes
//! on serving; once space is freed, the same request succeeds. (A pull that fails after its
//! download keeps the verified blobs for the next pull; `aegis image prune` removes them, on a
//! full disk too.)
//!
//! The disks are real: each test mounts a small tmpfs (which needs root), puts the daemon's
//! home or its image store there and fills it with a file until writes fail with ENOSPC. No VM
//! boots here.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

#[path = "../../aegis-image/tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aegis_proto::api::ImageSummary;
use aegis_testkit::{Daemon, Output, Tmpfs};
use support::image::{sha256, LayerBlob, TestImage};
use support::layers::Layer;
use support::registry::Registry;

/// How long a daemon that must refuse to start may take to exit: it fails before it listens.
const REFUSAL: Duration = Duration::from_secs(20);
/// A tmpfs for a whole daemon home: the registry, the key, the log and the store's skeleton
/// take well under 1 MiB.
const HOME_TMPFS_BYTES: u64 = 4 << 20;
/// A tmpfs for an image store: room for the test image's blobs, its unpacked tree and its ext4
/// base image once the filler is gone.
const STORE_TMPFS_BYTES: u64 = 48 << 20;
/// Bytes of incompressible data in the test image's layer: large enough that the free space left
/// for the "room for the download only" case is far from both edges.
const LAYER_DATA_BYTES: usize = 4 << 20;

/// The hint of a pull that found the image store's disk full.
const STORE_FULL_HINT: &str = "hint: that disk is full: free space on it (`aegis image prune` \
     removes what no image or instance uses), then try again; nothing half-written was kept";

fn cli() -> &'static str {
    env!("CARGO_BIN_EXE_aegis")
}

/// stderr from its `error:` line on, joined into one line.
fn error_text(out: &Output) -> String {
    let at = out
        .stderr
        .find("error: ")
        .unwrap_or_else(|| panic!("no error line: {out}"));
    out.stderr[at..].replace('\n', " ")
}

/// Asserts the CLI failed with Aegis's own exit code and an error saying the disk is full,
/// naming `path`.
fn assert_disk_full(out: &Output, path: &Path) {
    out.expect_code(125);
    let text = error_text(out);
    assert!(
        text.contains("is full") || text.contains("No space left on device"),
        "the error does not say the disk is full: {out}"
    );
    assert!(
        text.contains(&path.display().to_string()),
        "the error does not name {}: {out}",
        path.display()
    );
}

/// Every file and directory under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// A corrupt registry

/// A valid registry as a daemon leaves it (WAL mode, checkpointed), with enough secrets to
/// span many pages.
fn valid_registry() -> Vec<u8> {
    let d = Daemon::builder().own_images().start().use_cli(cli());
    let filler = "v".repeat(2000);
    for i in 0..40 {
        d.aegis(["secret", "set", &format!("SECRET_{i}"), &filler])
            .expect_success();
    }
    let copy = tempfile::tempdir().unwrap();
    let path = copy.path().join("aegis.db");
    let live = rusqlite::Connection::open(d.home().join("aegis.db")).unwrap();
    live.execute("VACUUM INTO ?1", [path.to_str().unwrap()])
        .unwrap();
    drop(live);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);
    std::fs::read(&path).unwrap()
}

#[test]
fn a_corrupt_registry_stops_aegisd_at_start_and_is_left_as_it_was() {
    let valid = valid_registry();
    assert!(valid.len() > 64 << 10, "{} bytes", valid.len());
    let garbage = random_bytes(64 << 10);
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() / 2 + 1234);

    for (case, bytes) in [("random bytes", garbage), ("truncated", truncated)] {
        let mut d = Daemon::builder().own_images().unstarted();
        let db = d.home().join("aegis.db");
        std::fs::write(&db, &bytes).unwrap();

        let out = d.launch_expecting_failure(REFUSAL);
        assert_eq!(out.code, Some(1), "{case}: {out}");
        let p = db.display();
        let expected = format!(
            "aegisd: error: the registry {p} is damaged or is not a SQLite database; it was left \
             as it is: move it aside (`mv {p} {p}.damaged`) and restore a backup, or start \
             without it to begin with no instances and no secrets: "
        );
        assert!(
            out.stderr.contains(&expected),
            "{case}: no {expected:?} in {out}"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "{case}: aegisd changed the file"
        );
        for leftover in ["aegisd.pid", "aegisd.sock", "aegis.db-wal", "aegis.db-shm"] {
            assert!(
                !d.home().join(leftover).exists(),
                "{case}: {leftover} was left behind: {out}"
            );
        }
    }
}

/// `n` bytes from the kernel's random pool: no pattern a format could recognise, nothing a
/// compressor could shrink.
fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap();
    bytes
}

// ---------------------------------------------------------------------------------------------
// A full disk under the daemon's home: secrets and kits

/// The stored row of secret `name` (nonce, ciphertext, dates), read beside the daemon.
fn secret_row(db: &Path, name: &str) -> (Vec<u8>, Vec<u8>, String, String) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT nonce, ciphertext, created_at, updated_at FROM secrets WHERE name = ?1",
        [name],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .unwrap_or_else(|e| panic!("no row for secret {name}: {e}"))
}

fn secret_names(d: &Daemon) -> Vec<String> {
    let out = d.aegis(["secret", "list", "--json"]);
    out.expect_success();
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    list.iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A daemon with its own image store whose whole home is on `disk`.
fn daemon_on(disk: &Tmpfs) -> Daemon {
    Daemon::builder()
        .own_images()
        .home_in(disk.path())
        .start()
        .use_cli(cli())
}

#[test]
fn a_full_disk_fails_secret_set_clearly_and_keeps_the_stored_secrets() {
    let disk = Tmpfs::mount(HOME_TMPFS_BYTES);
    let d = daemon_on(&disk);
    let db = d.home().join("aegis.db");
    d.aegis(["secret", "set", "FIRST", "first-value"])
        .expect_success();
    let stored = secret_row(&db, "FIRST");

    let filler = disk.fill();
    let out = d.aegis(["secret", "set", "SECOND", "second-value"]);
    assert_disk_full(&out, &db);
    let text = error_text(&out);
    assert!(
        text.starts_with(&format!(
            "error: cannot set secret SECOND: cannot access the secret store: cannot store \
             secret: the disk holding the registry {} is full",
            db.display()
        )),
        "{out}"
    );
    assert!(
        text.contains("hint: free space on the file system of"),
        "{out}"
    );
    let out = d.aegis(["secret", "set", "FIRST", "overwritten"]);
    assert_disk_full(&out, &db);

    // The daemon answers, and the first secret is as it was.
    assert_eq!(secret_names(&d), ["FIRST"]);
    assert_eq!(secret_row(&db, "FIRST"), stored, "FIRST changed");

    filler.remove();
    d.aegis(["secret", "set", "SECOND", "second-value"])
        .expect_success();
    d.aegis(["secret", "set", "FIRST", "overwritten"])
        .expect_success();
    assert_eq!(secret_names(&d), ["FIRST", "SECOND"]);
    assert_ne!(
        secret_row(&db, "FIRST").1,
        stored.1,
        "FIRST was not replaced"
    );
}

#[test]
fn a_full_disk_fails_kit_install_clearly_and_leaves_no_manifest() {
    let disk = Tmpfs::mount(HOME_TMPFS_BYTES);
    let d = daemon_on(&disk);
    let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kits/example");
    let kits = d.home().join("kits");
    let before = if kits.is_dir() {
        tree(&kits)
    } else {
        BTreeSet::new()
    };

    let filler = disk.fill();
    let out = d.aegis(["kit", "install", kit.to_str().unwrap()]);
    assert_disk_full(&out, &kits.join("example.json"));
    let after = if kits.is_dir() {
        tree(&kits)
    } else {
        BTreeSet::new()
    };
    assert_eq!(after, before, "the failed install left files: {out}");
    let out = d.aegis(["kit", "list"]);
    out.expect_success();
    assert!(!out.stdout.contains("example"), "{out}");

    filler.remove();
    d.aegis(["kit", "install", kit.to_str().unwrap()])
        .expect_success();
    let out = d.aegis(["kit", "list"]);
    out.expect_success();
    assert!(out.stdout.contains("example"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// A full disk under the image store

/// An image whose one layer holds [`LAYER_DATA_BYTES`] that compression cannot shrink, so the
/// blob, the unpacked tree and the base image each need about that much space.
fn bulky_image() -> TestImage {
    let data = random_bytes(LAYER_DATA_BYTES);
    let mut layer = Layer::new();
    layer
        .dir("etc", 0o755, 0, 0)
        .file("etc/os-release", 0o644, 0, 0, b"ID=aegis-full-disk\n")
        .file("opt/bulk.bin", 0o644, 0, 0, &data);
    TestImage::new(
        vec![LayerBlob::plain(layer)],
        serde_json::json!({"Cmd": ["/bin/sh"]}),
    )
}

/// What the image store holds: [`tree`] less its lock files, which are empty and made on first
/// use (`store.lock`, `refs.lock`, `locks/*.lock`).
fn store_contents(store: &Path) -> BTreeSet<PathBuf> {
    tree(store)
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "lock"))
        .collect()
}

fn image_refs(d: &Daemon) -> Vec<String> {
    let out = d.aegis(["image", "list", "--json"]);
    out.expect_success();
    let images: Vec<ImageSummary> = serde_json::from_str(&out.stdout).unwrap();
    images.into_iter().map(|i| i.reference).collect()
}

/// The files a pull keeps in the store: `blobs/sha256/<hex>` whose content hashes to its name
/// (complete, verified blobs), and nothing else but the image record and the reference table.
fn assert_only_complete_blobs_kept(store: &Path, before: &BTreeSet<PathBuf>, out: &Output) {
    for path in store_contents(store).difference(before) {
        let name = path.to_str().unwrap();
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let bytes = std::fs::read(store.join(path)).unwrap();
            assert_eq!(
                sha256(&bytes),
                format!("sha256:{hex}"),
                "partial blob {name}: {out}"
            );
        } else {
            assert!(
                name == "refs.json" || name.starts_with("images/sha256/"),
                "the failed pull left {name}: {out}"
            );
        }
    }
}

#[test]
fn a_full_disk_fails_an_image_pull_clearly_and_keeps_nothing_half_written() {
    let registry = Registry::start();
    let image = bulky_image();
    registry.push_image("aegis/bulky", "v1", &image);
    let reference = format!("{}/aegis/bulky:v1", registry.host());

    let disk = Tmpfs::mount(STORE_TMPFS_BYTES);
    let store = disk.path().join("images");
    let d = Daemon::builder().images_in(&store).start().use_cli(cli());
    // The path the daemon writes to (and names): through the home's link to the tmpfs.
    let daemon_store = d.home().join("images");
    let empty = store_contents(&store);

    // No room at all: the first blob cannot be written, and nothing is kept.
    let filler = disk.fill();
    let out = d.aegis(["image", "pull", &reference]);
    assert_disk_full(&out, &daemon_store);
    assert!(error_text(&out).contains(STORE_FULL_HINT), "{out}");
    assert_eq!(
        store_contents(&store),
        empty,
        "the failed pull left files: {out}"
    );
    assert_eq!(image_refs(&d), Vec::<String>::new());
    filler.remove();

    // Room for the download, not for unpacking it into the base image: no reference, no base
    // image, nothing in tmp/; the verified blobs stay for the next pull (prune removes them).
    let filler = disk.fill_leaving(LAYER_DATA_BYTES as u64 * 3 / 2);
    let out = d.aegis(["image", "pull", &reference]);
    assert_disk_full(&out, &daemon_store);
    assert!(error_text(&out).contains("while unpacking layer"), "{out}");
    assert!(error_text(&out).contains(STORE_FULL_HINT), "{out}");
    assert_eq!(image_refs(&d), Vec::<String>::new());
    assert_only_complete_blobs_kept(&store, &empty, &out);
    for dir in ["tmp", "rootfs"] {
        assert_eq!(
            tree(&store.join(dir)),
            BTreeSet::new(),
            "{dir}/ after: {out}"
        );
    }
    filler.remove();

    // Prune works on a full disk and gives back what the failed pull kept.
    let filler = disk.fill();
    d.aegis(["image", "prune"]).expect_success();
    let mut pruned = store_contents(&store);
    pruned.remove(Path::new("refs.json"));
    assert_eq!(pruned, empty, "prune left files");
    filler.remove();

    d.aegis(["image", "pull", &reference]).expect_success();
    assert_eq!(image_refs(&d), [reference]);
    assert_eq!(tree(&store.join("tmp")), BTreeSet::new());
}
