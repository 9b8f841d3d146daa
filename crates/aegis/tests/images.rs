//! End-to-end tests of images (issue 4) through the `aegis` CLI: a real `docker-registry` on
//! loopback started by each test, a real `aegisd` with an image store of its own (so pulls and
//! prunes never touch the set-up home's), and real VMs booting what was pulled.
//!
//! The test image's bottom layer is the default image's root filesystem, read from the set-up
//! home's store, so the VM has a shell; the layers above add what the issue names (a whiteout, a
//! symlink, a file owned by a non-root user, a setuid file) and its config sets Env, WorkingDir,
//! User and Entrypoint + Cmd. Each test boots at most one VM and asserts as much as it can
//! against it.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

#[path = "../../aegis-image/tests/support/mod.rs"]
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use aegis_image::{ImageRef, ImageStore};
use aegis_proto::api::{ImageDetail, ImageSummary, InstanceStatus, PruneResult};
use aegis_testkit::{wait_until, Daemon, Output};
use support::image::{sha256, standard_image, LayerBlob, TestImage, MEDIA_MANIFEST};
use support::layers::Layer;
use support::registry::Registry;

/// A boot under TCG on a loaded 2-core machine, with room to spare.
const BOOT: Duration = Duration::from_secs(150);
/// Pulling or importing a ~230 MB root filesystem and building its ext4 disk.
const PULL: Duration = Duration::from_secs(300);
/// The default image's reference, as `./setup.sh` imports it.
const DEFAULT_IMAGE: &str = "aegis.local/default:latest";

fn daemon() -> Daemon {
    Daemon::start_with_own_images().use_cli(env!("CARGO_BIN_EXE_aegis"))
}

fn json(out: &Output) -> Value {
    out.expect_success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn ndjson(out: &Output) -> Vec<Value> {
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn images(d: &Daemon) -> Vec<ImageSummary> {
    serde_json::from_value(json(&d.aegis(["image", "list", "--json"]))).unwrap()
}

fn short(digest: &str) -> &str {
    &digest[7..19]
}

/// stderr from its `error:` line on (progress lines come before it).
fn error_text(out: &Output) -> &str {
    let at = out
        .stderr
        .find("error: ")
        .unwrap_or_else(|| panic!("no error line: {out}"));
    &out.stderr[at..]
}

/// Files in the store's `tmp/`: a failed pull must leave none.
fn store_leftovers(d: &Daemon) -> Vec<PathBuf> {
    std::fs::read_dir(d.home().join("images/tmp"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// The default image's root filesystem layer from the set-up home's store (read only): its blob
/// path, and the layer as a test image layer.
fn default_rootfs_layer() -> (PathBuf, LayerBlob) {
    let store = ImageStore::open(Daemon::shared_images_dir()).unwrap();
    let record = store
        .lookup(&ImageRef::parse(DEFAULT_IMAGE).unwrap())
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "no {DEFAULT_IMAGE} in {}: run ./setup.sh",
                store.root().display()
            )
        });
    assert_eq!(record.layers.len(), 1, "the default image has one layer");
    let layer = &record.layers[0];
    let path = store.blob_path(&layer.digest);
    let bytes = std::fs::read(&path).unwrap();
    let tar = decompress(&bytes);
    let (media_type, diff_id) = match layer.media_type.as_str() {
        t if t.ends_with("+gzip") => ("application/vnd.oci.image.layer.v1.tar+gzip", sha256(&tar)),
        t if t.ends_with("+zstd") => ("application/vnd.oci.image.layer.v1.tar+zstd", sha256(&tar)),
        _ => (
            "application/vnd.oci.image.layer.v1.tar",
            layer.digest.to_string(),
        ),
    };
    (
        path,
        LayerBlob {
            bytes,
            media_type,
            diff_id,
        },
    )
}

fn decompress(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(bytes).unwrap()
    } else {
        bytes.to_vec()
    }
}

/// The contents of `name` (e.g. `etc/passwd`) in an uncompressed layer tar.
fn file_in_tar(tar: &[u8], name: &str) -> Vec<u8> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path.trim_start_matches("./") == name {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            return data;
        }
    }
    panic!("no {name} in the default image's root filesystem");
}

/// The image of the issue, bootable: the default root filesystem, then a layer adding user
/// `app` (uid 1000), a file owned by it, a setuid-root file, a symlink, a file to delete and an
/// entrypoint script; then a layer deleting that file (whiteout) and hiding `/opt/data`'s lower
/// entries (opaque whiteout).
fn bootable_image() -> TestImage {
    let (_, base) = default_rootfs_layer();
    let tar = decompress(&base.bytes);
    let mut passwd = file_in_tar(&tar, "etc/passwd");
    passwd.extend_from_slice(b"app:x:1000:1000:App:/home/app:/bin/sh\n");
    let mut group = file_in_tar(&tar, "etc/group");
    group.extend_from_slice(b"app:x:1000:\n");
    drop(tar);

    let entry = b"#!/bin/sh\n\
        echo \"entry user=$(id -un) pwd=$(pwd) greeting=$GREETING args=$*\"\n\
        exec sleep 100000\n";
    let mut files = Layer::new();
    files
        .file("etc/passwd", 0o644, 0, 0, &passwd)
        .file("etc/group", 0o644, 0, 0, &group)
        .file("etc/deleted-me", 0o644, 0, 0, b"delete me")
        .dir("home/app", 0o750, 1000, 1000)
        .file("home/app/notes.txt", 0o640, 1000, 1000, b"owned by app")
        .file("usr/local/bin/entry.sh", 0o755, 0, 0, entry)
        .file(
            "usr/local/bin/setuid-tool",
            0o4755,
            0,
            0,
            b"#!/bin/sh\necho setuid\n",
        )
        .symlink("usr/local/bin/tool-link", "setuid-tool")
        .file("opt/data/old", 0o644, 0, 0, b"old");
    let mut deletions = Layer::new();
    deletions
        .whiteout("etc/deleted-me")
        .dir("opt/data", 0o755, 0, 0)
        .opaque("opt/data")
        .file("opt/data/new", 0o644, 0, 0, b"new");
    TestImage::new(
        vec![base, LayerBlob::gzip(files), LayerBlob::zstd(deletions)],
        json!({
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "GREETING=hello from the image",
            ],
            "WorkingDir": "/home/app",
            "User": "app",
            "Entrypoint": ["/usr/local/bin/entry.sh"],
            "Cmd": ["from-cmd"],
        }),
    )
}

fn wait_running(d: &Daemon, target: &str) {
    wait_until(BOOT, &format!("{target} to run"), || {
        match d.instance(target) {
            Ok(i) if i.state == InstanceStatus::Running => Ok(()),
            Ok(i) => Err(format!(
                "{} (reason {:?})\n{}",
                i.state,
                i.reason,
                d.log_tail()
            )),
            Err(e) => Err(e),
        }
    });
}

#[test]
fn issue_4_pulled_image_boots_with_its_layers_and_config() {
    let registry = Registry::start();
    let image = bootable_image();
    registry.push_image("aegis/shell", "v1", &image);
    // The same image under a second tag, for `--image` to pull on first use.
    registry.push_manifest("aegis/shell", "v2", &image.manifest_bytes(), MEDIA_MANIFEST);
    let digest = image.manifest_digest();
    let v1 = format!("{}/aegis/shell:v1", registry.host());
    let v2 = format!("{}/aegis/shell:v2", registry.host());
    let d = daemon();

    // Pull, with plain progress lines (stderr is not a terminal) and a summary.
    let out = d.aegis_with_timeout(["image", "pull", &v1], PULL);
    out.expect_success();
    assert!(
        out.stdout
            .starts_with(&format!("pulled {v1} ({}, 3 layers, ", short(&digest))),
        "{out}"
    );
    for line in [
        format!("==> resolving {v1}"),
        format!(
            "==> layer {}: downloading",
            short(&image.layers[0].digest())
        ),
        format!("==> layer {}: done", short(&image.layers[2].digest())),
        format!("==> unpacking {} into its root filesystem", short(&digest)),
    ] {
        assert!(out.stderr.contains(&line), "no {line:?} in {out}");
    }

    // A second pull is served from the cache: one manifest request, no blob.
    let blob_gets = registry.count_requests("GET", "/v2/aegis/shell/blobs/");
    let out = d.aegis(["image", "pull", "--json", &v1]);
    out.expect_success();
    let events = ndjson(&out);
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{out}");
    assert_eq!(done["cached"], true, "{out}");
    assert!(events.iter().all(|e| e["event"] != "layer_start"), "{out}");
    let out = d.aegis(["image", "pull", &v1]);
    out.expect_success();
    assert_eq!(
        out.stdout,
        format!(
            "{v1} is up to date ({}, served from the local cache)\n",
            short(&digest)
        )
    );
    assert_eq!(
        registry.count_requests("GET", "/v2/aegis/shell/blobs/"),
        blob_gets,
        "no blob was downloaded again"
    );

    // list and inspect.
    let listed = images(&d);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].reference, v1);
    assert_eq!(listed[0].digest, digest);
    assert_eq!(listed[0].layers, 3);
    assert!(listed[0].base_image_built);
    let table = d.aegis(["image", "list"]);
    table.expect_success();
    assert!(table.stdout.starts_with("REFERENCE"), "{table}");
    assert!(table.stdout.contains(&v1), "{table}");
    let detail: ImageDetail =
        serde_json::from_value(json(&d.aegis(["image", "inspect", "--json", &v1]))).unwrap();
    assert_eq!(detail.config.user.as_deref(), Some("app"));
    assert_eq!(detail.config.working_dir.as_deref(), Some("/home/app"));
    assert_eq!(detail.config.entrypoint, ["/usr/local/bin/entry.sh"]);
    assert_eq!(detail.config.cmd, ["from-cmd"]);
    assert_eq!(detail.layer_digests.len(), 3);
    let text = d.aegis(["image", "inspect", &v1]);
    text.expect_success();
    assert!(text.stdout.contains("user:       app\n"), "{text}");

    // `instance start --image` pulls v2 on first use and, with no command, runs the image's
    // Entrypoint + Cmd as its User in its WorkingDir with its Env.
    let out = d.aegis_with_timeout(
        ["instance", "start", "--name", "shell", "--image", &v2],
        BOOT,
    );
    out.expect_success();
    wait_running(&d, "shell");
    let refs: Vec<(String, String)> = images(&d)
        .into_iter()
        .map(|i| (i.reference, i.digest))
        .collect();
    assert_eq!(
        refs,
        [(v1.clone(), digest.clone()), (v2.clone(), digest.clone())]
    );
    let entry_line = "entry user=app pwd=/home/app greeting=hello from the image args=from-cmd";
    wait_until(BOOT, "the entrypoint's output", || {
        let out = d.aegis(["logs", "shell"]);
        if out.stdout.lines().any(|l| l == entry_line) {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });

    // Inside the VM: the layers applied in order, with ownership and modes kept.
    let out = d.aegis([
        "exec",
        "shell",
        "--",
        "sh",
        "-c",
        "id -un; pwd; echo \"$GREETING\"; \
         if [ -e /etc/deleted-me ]; then echo present; else echo gone; fi; \
         stat -c '%U %G %a' /home/app /home/app/notes.txt; \
         stat -c '%U %a' /usr/local/bin/setuid-tool; \
         readlink /usr/local/bin/tool-link; ls /opt/data",
    ]);
    out.expect_success();
    assert_eq!(
        out.stdout,
        "app\n/home/app\nhello from the image\ngone\napp app 750\napp app 640\nroot 4755\n\
         setuid-tool\nnew\n",
        "{out}"
    );
    // The instance's fresh workspace volume was handed to the image's user, who can write it.
    let out = d.aegis([
        "exec",
        "shell",
        "--",
        "sh",
        "-c",
        "stat -c '%U %G' /workspace && echo data > /workspace/mine && stat -c %U /workspace/mine",
    ]);
    out.expect_success();
    assert_eq!(out.stdout, "app app\napp\n", "{out}");
    // An explicit --env wins over the image's Env.
    let out = d.aegis([
        "exec",
        "shell",
        "--env",
        "GREETING=explicit",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\"",
    ]);
    out.expect_success();
    assert_eq!(out.stdout, "explicit\n", "{out}");

    // Removing both references keeps what the instance uses; prune frees it once the instance
    // is gone.
    d.aegis(["image", "rm", &v1]).expect_success();
    let out = d.aegis(["image", "rm", &v2]);
    out.expect_success();
    assert_eq!(
        out.stdout,
        format!(
            "removed {v2} ({}); `aegis image prune` frees its space\n",
            short(&digest)
        )
    );
    assert!(images(&d).is_empty());
    let pruned: PruneResult =
        serde_json::from_value(json(&d.aegis(["image", "prune", "--json"]))).unwrap();
    assert!(
        !pruned.removed_images.contains(&digest),
        "an instance uses it: {pruned:?}"
    );
    let base = d
        .home()
        .join("images/rootfs")
        .join(format!("{}.ext4", &digest[7..]));
    assert!(base.is_file(), "the root disk of a used image stays");
    let out = d.aegis(["exec", "shell", "--", "cat", "/home/app/notes.txt"]);
    out.expect_success();
    assert_eq!(out.stdout, "owned by app", "{out}");

    d.aegis(["instance", "delete", "shell"]).expect_success();
    let out = d.aegis(["image", "prune"]);
    out.expect_success();
    assert!(
        out.stdout
            .starts_with("removed 1 images, 5 blobs and 1 root disks; reclaimed "),
        "{out}"
    );
    assert!(!base.exists());
}

#[test]
fn issue_4_default_image_imported_as_setup_does_boots_like_a_pulled_one() {
    let d = daemon();
    let (blob, _) = default_rootfs_layer();
    // setup.sh's exact command, with FILE relative to the CLI's directory.
    let relative = relative_to_cwd(&blob);
    let out = d.aegis_with_timeout(
        [
            "image",
            "import",
            "--rootfs",
            relative.to_str().unwrap(),
            "--tag",
            DEFAULT_IMAGE,
        ],
        PULL,
    );
    out.expect_success();
    assert!(
        out.stdout
            .starts_with(&format!("imported {DEFAULT_IMAGE} (")),
        "{out}"
    );
    assert!(out.stdout.contains(", 1 layers, "), "{out}");
    // setup.sh's check that the image is present.
    d.aegis(["image", "inspect", DEFAULT_IMAGE])
        .expect_success();
    let listed = images(&d);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reference, DEFAULT_IMAGE);
    assert!(listed[0].base_image_built, "{listed:?}");

    // The same file imported again gives the same image (its manifest digest is stable).
    let again = d.aegis_with_timeout(
        [
            "image",
            "import",
            "--rootfs",
            blob.to_str().unwrap(),
            "--tag",
            DEFAULT_IMAGE,
        ],
        PULL,
    );
    again.expect_success();
    assert_eq!(images(&d)[0].digest, listed[0].digest);

    // No --image: the imported default image boots.
    let out = d.aegis_with_timeout(
        [
            "run",
            "--",
            "sh",
            "-c",
            "echo hello from aegis; id -un; python3 -c 'print(6*7)'",
        ],
        BOOT,
    );
    out.expect_success();
    assert_eq!(out.stdout, "hello from aegis\nroot\n42\n", "{out}");
    let out = d.aegis_with_timeout(
        [
            "run",
            "--image",
            DEFAULT_IMAGE,
            "--",
            "sh",
            "-c",
            "test -x /bin/sh && echo same",
        ],
        BOOT,
    );
    out.expect_success();
    assert_eq!(out.stdout, "same\n", "{out}");
}

/// `path` relative to this process's directory (`..` up to `/`, then down).
fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut rel: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
    rel.push(path.strip_prefix("/").unwrap());
    rel
}

#[test]
fn issue_4_registry_failures_are_clear_and_leave_the_cache_unchanged() {
    let d = daemon();
    let registry = Registry::start();
    let small = standard_image();
    registry.push_image("aegis/small", "v1", &small);
    let good = format!("{}/aegis/small:v1", registry.host());
    d.aegis(["image", "pull", &good]).expect_success();
    let before = images(&d);
    assert_eq!(before.len(), 1);

    let assert_unchanged = |what: &str| {
        assert_eq!(images(&d), before, "{what} changed the image list");
        assert!(
            store_leftovers(&d).is_empty(),
            "{what} left temporary files: {:?}",
            store_leftovers(&d)
        );
    };

    // 404: no such repository.
    let missing = format!("{}/aegis/missing:v1", registry.host());
    let out = d.aegis(["image", "pull", &missing]);
    out.expect_code(125);
    assert_eq!(
        out.stderr.lines().next(),
        Some(format!("==> resolving {missing}").as_str())
    );
    assert_eq!(
        error_text(&out),
        format!(
            "error: cannot pull {missing}: image {missing} not found in registry {host}\n\
             hint: check the repository and tag of {missing}; `aegis image list` shows local \
             images\n",
            host = registry.host()
        ),
        "{out}"
    );
    assert_unchanged("a 404");

    // 401: the registry wants credentials and the daemon has none.
    let private = Registry::start_with_htpasswd("aegis", "secret");
    private.push_image("aegis/private", "v1", &small);
    let locked = format!("{}/aegis/private:v1", private.host());
    let out = d.aegis(["image", "pull", &locked]);
    out.expect_code(125);
    assert!(
        error_text(&out).starts_with(&format!(
            "error: cannot pull {locked}: registry {} refused access to {locked}",
            private.host()
        )),
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("hint: run `docker login {}`", private.host())),
        "{out}"
    );
    assert_unchanged("a 401");

    // A blob whose content does not match its digest.
    let mut odd = Layer::new();
    odd.file(
        "corrupt-me",
        0o644,
        0,
        0,
        b"unique content of the corrupt test",
    );
    let corrupt_image = TestImage::new(vec![LayerBlob::gzip(odd)], json!({"Cmd": ["true"]}));
    registry.push_image("aegis/corrupt", "v1", &corrupt_image);
    let bad_layer = corrupt_image.layers[0].digest();
    let stored = registry.stored_blob(&bad_layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let corrupt = format!("{}/aegis/corrupt:v1", registry.host());
    let out = d.aegis(["image", "pull", &corrupt]);
    out.expect_code(125);
    assert!(
        error_text(&out).starts_with(&format!(
            "error: cannot pull {corrupt}: blob {bad_layer} of {corrupt} from {} does not match \
             its digest",
            registry.host()
        )),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("hint: the registry or a proxy served corrupt data"),
        "{out}"
    );
    assert!(
        !d.home()
            .join("images/blobs/sha256")
            .join(&bad_layer[7..])
            .exists(),
        "the corrupt blob was not stored"
    );
    assert_unchanged("a corrupt blob");

    // Nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("127.0.0.1:{port}/aegis/app:v1");
    let out = d.aegis(["image", "pull", &unreachable]);
    out.expect_code(125);
    assert!(
        error_text(&out).starts_with(&format!(
            "error: cannot pull {unreachable}: cannot reach registry 127.0.0.1:{port}"
        )),
        "{out}"
    );
    assert!(out.stderr.contains("aegis image import FILE"), "{out}");
    assert_unchanged("an unreachable registry");

    // `--image` pulls on first use, and says as clearly why it could not.
    let out = d.aegis(["run", "--image", &missing, "--", "true"]);
    out.expect_code(125);
    assert_eq!(
        out.stderr,
        format!(
            "error: cannot create the instance: image {missing} not found in registry {host}\n\
             hint: check the repository and tag of {missing}; `aegis image list` shows local \
             images\n",
            host = registry.host()
        ),
        "{out}"
    );
    let out = d.aegis(["instance", "start", "--image", &locked, "--", "true"]);
    out.expect_code(125);
    assert!(
        out.stderr.starts_with(&format!(
            "error: cannot create the instance: registry {} refused access to {locked}",
            private.host()
        )),
        "{out}"
    );
    assert!(out.stderr.contains("hint: run `docker login"), "{out}");
    let out = d.aegis(["instance", "start", "--image", &unreachable, "--", "true"]);
    out.expect_code(125);
    assert!(out.stderr.contains("cannot reach registry"), "{out}");
    assert!(out.stderr.contains("hint: "), "{out}");
    let listed = json(&d.aegis(["instance", "list", "--json"]));
    assert_eq!(listed, json!([]), "no instance was created");
    assert_unchanged("failed --image pulls");

    // Unknown references are 404s with a remedy.
    let out = d.aegis(["image", "inspect", &missing]);
    out.expect_code(125);
    assert_eq!(
        out.stderr,
        format!(
            "error: cannot inspect image {missing}: image {missing} is not in the image store\n\
             hint: run `aegis image pull {missing}`\n"
        ),
        "{out}"
    );
    d.aegis(["image", "rm", &missing]).expect_code(125);
}

#[test]
fn issue_4_import_of_oci_layouts_and_docker_save_archives() {
    let d = daemon();
    let dir = tempfile::tempdir().unwrap();
    let image = standard_image();
    let digest = image.manifest_digest();

    // An OCI layout directory without a name: --tag names it.
    let layout = dir.path().join("layout");
    image.write_oci_layout(&layout, Value::Null);
    let out = d.aegis([
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "aegis.test/layout:v1",
    ]);
    out.expect_success();
    assert_eq!(
        out.stdout.lines().next().unwrap_or_default(),
        format!(
            "imported aegis.test/layout:v1 ({}, 2 layers, {})",
            short(&digest),
            indicatif_bytes(image_size(&image))
        ),
        "{out}"
    );
    let detail: ImageDetail = serde_json::from_value(json(&d.aegis([
        "image",
        "inspect",
        "--json",
        "aegis.test/layout:v1",
    ])))
    .unwrap();
    assert_eq!(detail.summary.digest, digest);
    assert!(detail.summary.base_image_built);
    assert_eq!(
        detail.config.env,
        ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello"]
    );
    assert_eq!(detail.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(detail.config.entrypoint, ["/usr/bin/setuid-tool"]);

    // The same layout as a tar archive, named by its annotation.
    let named = dir.path().join("named");
    image.write_oci_layout(
        &named,
        json!({"org.opencontainers.image.ref.name": "aegis.test/named:v2"}),
    );
    let archive = dir.path().join("layout.tar");
    std::fs::write(&archive, support::image::tar_dir(&named)).unwrap();
    let out = d.aegis(["image", "import", "--json", archive.to_str().unwrap()]);
    out.expect_success();
    let done = ndjson(&out).pop().unwrap();
    assert_eq!(done["event"], "done", "{out}");
    assert_eq!(
        done["images"][0]["reference"], "aegis.test/named:v2",
        "{out}"
    );
    assert_eq!(done["images"][0]["digest"], digest.as_str(), "{out}");

    // A `docker save` archive.
    let saved = dir.path().join("saved.tar");
    std::fs::write(&saved, image.docker_save_tar(&["aegis.test/saved:v3"])).unwrap();
    d.aegis(["image", "import", saved.to_str().unwrap()])
        .expect_success();
    let references: Vec<String> = images(&d).into_iter().map(|i| i.reference).collect();
    assert_eq!(
        references,
        [
            "aegis.test/layout:v1",
            "aegis.test/named:v2",
            "aegis.test/saved:v3"
        ]
    );

    // What cannot be imported says so.
    let missing = dir.path().join("missing.tar");
    let out = d.aegis(["image", "import", missing.to_str().unwrap()]);
    out.expect_code(125);
    assert!(
        out.stderr.starts_with(&format!(
            "error: cannot read {}: No such file or directory",
            missing.display()
        )),
        "{out}"
    );
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, tar_with_one_file()).unwrap();
    let out = d.aegis(["image", "import", junk.to_str().unwrap()]);
    out.expect_code(125);
    assert!(
        out.stderr
            .starts_with(&format!("error: cannot import {}: ", junk.display())),
        "{out}"
    );
    d.aegis(["image", "import", "--rootfs", junk.to_str().unwrap()])
        .expect_code(2);
    assert_eq!(images(&d).len(), 3);
}

fn tar_with_one_file() -> Vec<u8> {
    let mut layer = Layer::new();
    layer.file("hello.txt", 0o644, 0, 0, b"not an image");
    layer.tar()
}

/// Bytes of manifest, config and layers, as the store counts an image's size.
fn image_size(image: &TestImage) -> u64 {
    image.blobs().iter().map(|(_, b)| b.len() as u64).sum()
}

/// The CLI's size format (binary units with two decimals, as `indicatif::HumanBytes`).
fn indicatif_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
