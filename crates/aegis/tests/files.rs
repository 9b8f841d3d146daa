//! End-to-end tests of files in an instance, against a real `aegisd` and one real VM shared by
//! the assertions: `aegis cp` both ways (a file with its mode, 10 MiB of binary data checked
//! by digest, a directory tree with a symbolic link, tar archives on stdin and stdout), the
//! file API (stat, list, ranged read, mkdir, rename, remove), clear errors, and a copy that
//! wakes a stopped instance.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use aegis_testkit::{pseudo_random_bytes, Daemon, Output};
use sha2::{Digest, Sha256};

const CALL: Duration = Duration::from_secs(240);

fn guest(d: &Daemon, script: &str) -> String {
    let out = d.aegis(["exec", "f", "--", "sh", "-c", script]);
    out.expect_success();
    out.stdout
}

fn cp(d: &Daemon, src: &str, dest: &str) -> Output {
    d.aegis(["cp", src, dest])
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn files_move_in_and_out_of_an_instance() {
    let d = Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"));
    d.aegis([
        "instance",
        "start",
        "--name",
        "f",
        "--idle-pause",
        "never",
        "--",
        "sleep",
        "infinity",
    ])
    .expect_success();
    let local = d.home().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let at = |name: &str| local.join(name).to_string_lossy().into_owned();

    // A file into an existing directory keeps its name and mode.
    std::fs::write(local.join("hello.txt"), "hello\n").unwrap();
    std::fs::set_permissions(
        local.join("hello.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    cp(&d, &at("hello.txt"), "f:/tmp").expect_success();
    assert_eq!(
        guest(&d, "cat /tmp/hello.txt; stat -c %a /tmp/hello.txt"),
        "hello\n640\n"
    );

    // 10 MiB of binary data in and back out, unchanged.
    let big = pseudo_random_bytes(10 * 1024 * 1024 + 3, 0x2545_F491_4F6C_DD1D);
    let digest = hex::encode(Sha256::digest(&big));
    std::fs::write(local.join("big.bin"), &big).unwrap();
    cp(&d, &at("big.bin"), "f:/tmp/big.bin").expect_success();
    assert_eq!(
        guest(&d, "sha256sum /tmp/big.bin")
            .split_whitespace()
            .next(),
        Some(digest.as_str())
    );
    cp(&d, "f:/tmp/big.bin", &at("big.out")).expect_success();
    assert!(
        std::fs::read(local.join("big.out")).unwrap() == big,
        "the copy out differs"
    );

    // A directory tree with a link, into an existing directory and back to a new one.
    let tree = local.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "ay\n").unwrap();
    std::fs::write(tree.join("sub/b.txt"), "bee\n").unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    cp(&d, &at("tree"), "f:/opt").expect_success();
    assert_eq!(
        guest(&d, "cat /opt/tree/sub/b.txt; readlink /opt/tree/link"),
        "bee\na.txt\n"
    );
    cp(&d, "f:/opt/tree", &at("back")).expect_success();
    assert_eq!(
        std::fs::read_to_string(local.join("back/sub/b.txt")).unwrap(),
        "bee\n"
    );
    assert_eq!(
        std::fs::read_link(local.join("back/link")).unwrap(),
        Path::new("a.txt")
    );
    // A file onto a new name; then onto an existing file, replacing it.
    cp(&d, "f:/opt/tree/a.txt", &at("renamed.txt")).expect_success();
    cp(&d, "f:/tmp/hello.txt", &at("renamed.txt")).expect_success();
    assert_eq!(
        std::fs::read_to_string(local.join("renamed.txt")).unwrap(),
        "hello\n"
    );
    assert!(
        !std::fs::read_dir(&local).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".aegis-cp")),
        "a staging directory was left behind"
    );

    // Tar archives on stdout and stdin.
    let out = cp(&d, "f:/opt/tree", "-");
    out.expect_success();
    assert!(
        out.stdout.contains("tree/sub/b.txt"),
        "not a tar of the tree"
    );
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o600);
    header.set_cksum();
    archive
        .append_data(&mut header, "from-tar.txt", &b"tar\n"[..])
        .unwrap();
    std::fs::write(local.join("in.tar"), archive.into_inner().unwrap()).unwrap();
    d.aegis_with_input(["cp", "-", "f:/srv"], &local.join("in.tar"), CALL)
        .expect_success();
    assert_eq!(guest(&d, "cat /srv/from-tar.txt"), "tar\n");

    // The file API.
    let stat = d.api(
        "GET",
        "/v1/instances/f/files/stat?path=/tmp/hello.txt",
        None,
    );
    assert_eq!(stat.status, 200, "{}", stat.body);
    let stat = json(&stat.body);
    assert_eq!(stat["kind"], "file");
    assert_eq!(stat["size"], 6);
    assert_eq!(stat["mode"], "0640");
    assert_eq!(stat["owner"], "root");
    assert!(stat["modified"].as_str().unwrap().contains('T'), "{stat}");
    let list = d.api(
        "GET",
        "/v1/instances/f/files/list?path=/opt/tree&depth=2",
        None,
    );
    assert_eq!(list.status, 200, "{}", list.body);
    let names: Vec<String> = json(&list.body)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["path"].as_str().unwrap(),
                e["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "/opt/tree/a.txt:file",
            "/opt/tree/link:symlink",
            "/opt/tree/sub:dir",
            "/opt/tree/sub/b.txt:file"
        ]
    );
    let ranged = d.api(
        "GET",
        "/v1/instances/f/files?path=/tmp/hello.txt&offset=1&length=3",
        None,
    );
    assert_eq!((ranged.status, ranged.body.as_str()), (200, "ell"));
    let made = d.api(
        "POST",
        "/v1/instances/f/files/mkdir",
        Some(r#"{"path": "/srv/a/b", "parents": true, "mode": "0700"}"#),
    );
    assert_eq!(made.status, 200, "{}", made.body);
    assert_eq!(json(&made.body)["mode"], "0700");
    let again = d.api(
        "POST",
        "/v1/instances/f/files/mkdir",
        Some(r#"{"path": "/srv/a/b"}"#),
    );
    assert_eq!(again.status, 409, "{}", again.body);
    let moved = d.api(
        "POST",
        "/v1/instances/f/files/rename",
        Some(r#"{"from": "/srv/from-tar.txt", "to": "/srv/a/b/moved.txt"}"#),
    );
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(guest(&d, "cat /srv/a/b/moved.txt"), "tar\n");
    let not_empty = d.api("DELETE", "/v1/instances/f/files?path=/srv/a", None);
    assert_eq!(not_empty.status, 409, "{}", not_empty.body);
    let removed = d.api(
        "DELETE",
        "/v1/instances/f/files?path=/srv/a&recursive=true",
        None,
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(guest(&d, "ls /srv"), "");

    // Clear errors, nothing half done.
    let missing = d.api("GET", "/v1/instances/f/files/stat?path=/no/such", None);
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(missing.body.contains("/no/such"), "{}", missing.body);
    let relative = d.api("GET", "/v1/instances/f/files/stat?path=etc", None);
    assert_eq!(relative.status, 400, "{}", relative.body);
    let out = cp(&d, "f:/no/such", &at("x"));
    assert_eq!(out.code, Some(125), "{out}");
    assert!(out.stderr.contains("/no/such"), "{out}");
    let out = cp(&d, &at("hello.txt"), "f:/no/such/dir/");
    assert_eq!(out.code, Some(125), "{out}");
    let out = cp(&d, "f:etc/hosts", &at("x"));
    assert!(out.stderr.contains("must be absolute"), "{out}");
    let out = cp(&d, &at("tree"), "f:/tmp/hello.txt");
    assert!(out.stderr.contains("onto the file"), "{out}");
    assert_eq!(guest(&d, "cat /tmp/hello.txt"), "hello\n");

    // A copy wakes a stopped instance, as exec does.
    d.aegis(["instance", "stop", "f"]).expect_success();
    cp(&d, "f:/tmp/hello.txt", &at("woken.txt")).expect_success();
    assert_eq!(
        std::fs::read_to_string(local.join("woken.txt")).unwrap(),
        "hello\n"
    );

    d.aegis(["instance", "delete", "f"]).expect_success();
}
