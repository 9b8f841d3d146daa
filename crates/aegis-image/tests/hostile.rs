//! The hostile images corpus: crafted layers and archives, and registries that misbehave. Each
//! is refused or contained with an error naming the limit it broke; nothing is written outside
//! the store; a failed pull or build keeps nothing (tmp/ empty, references as they were); and
//! memory stays bounded.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod support;

use std::path::Path;
use std::time::Duration;

use aegis_image::tar_reader::ExtendedHeader;
use aegis_image::{
    import_archive, import_rootfs_tar, pull, BaseImagePolicy, BuildError, CredentialSource,
    ImageConfig, ImageRecord, ImageRef, ImageStore, ImportError, ImportOptions, PullError,
    PullOptions, UnpackError, UnpackLimits,
};
use serde_json::json;
use support::debugfs::Ext4Image;
use support::hostile::{Body, HostileRegistry};
use support::image::{sha256, LayerBlob, TestImage, MEDIA_CONFIG, MEDIA_MANIFEST};
use support::layers::{gzip_bomb, huge_extended_header, Layer};
use support::registry::Registry;

/// Limits small enough for tests to cross cheaply.
const TEST_LIMITS: UnpackLimits = UnpackLimits {
    max_unpacked_bytes: 64 << 20,
    max_entries: 1000,
    max_metadata_bytes: 64 << 10,
};

fn store_at(root: &Path) -> ImageStore {
    aegis_testkit::tool("mke2fs");
    ImageStore::open(root)
        .unwrap()
        .with_unpack_limits(TEST_LIMITS)
}

fn assert_no_leftovers(store: &ImageStore) {
    let tmp: Vec<_> = std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temporary files left behind: {tmp:?}");
}

/// Imports `layer` (a tar, plain or compressed) as a one-layer image named `name` and builds
/// its base image.
fn import_and_build(
    store: &ImageStore,
    dir: &Path,
    name: &str,
    layer: &[u8],
) -> (ImageRecord, Result<std::path::PathBuf, BuildError>) {
    let path = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    std::fs::write(&path, layer).unwrap();
    let reference = ImageRef::parse(name).unwrap();
    let record = import_rootfs_tar(store, &path, &reference, &ImageConfig::default()).unwrap();
    let built = store.base_image(&record);
    (record, built)
}

fn unpack_error(built: Result<std::path::PathBuf, BuildError>) -> UnpackError {
    match built {
        Err(BuildError::Unpack { source, .. }) => source,
        other => panic!("expected an unpack error, got {other:?}"),
    }
}

/// The whole error chain, as the CLI prints it.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Peak resident memory of this test process so far (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn escapes_stay_inside_the_root_and_leave_the_host_untouched() {
    let base = tempfile::tempdir().unwrap();
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("canary"), b"original").unwrap();
    let layers_dir = base.path().join("layers");
    std::fs::create_dir(&layers_dir).unwrap();
    let store = store_at(&base.path().join("store/images"));
    // Staging is <base>/store/images/tmp/<name>: four `..` reach <base>.
    let up = "../../../../outside/canary";
    let canary = outside.join("canary").to_str().unwrap().to_owned();
    let outside_dir = outside.to_str().unwrap().to_owned();
    assert!(
        canary.len() < 90,
        "the raw header name field holds 100 bytes"
    );
    let inside = |path: &str| Ok(path.to_owned());

    type Expect = Result<String, fn(&UnpackError) -> bool>;
    let mut cases: Vec<(&str, Layer, Expect)> = Vec::new();
    let mut l = Layer::new();
    l.raw_file(up, b"pwned");
    cases.push((
        "dot-dot",
        l,
        Err(|e| matches!(e, UnpackError::UnsafePath { .. })),
    ));
    let mut l = Layer::new();
    l.raw_file(&canary, b"pwned");
    cases.push(("absolute", l, inside(&canary)));
    let mut l = Layer::new();
    l.raw_link(tar::EntryType::Symlink, "evil", "/")
        .raw_file(&format!("evil{canary}"), b"pwned");
    cases.push(("symlink to /", l, inside(&canary)));
    let mut l = Layer::new();
    l.raw_link(tar::EntryType::Symlink, "evil", "../../../..")
        .raw_file("evil/outside/canary", b"pwned");
    cases.push(("symlink up", l, inside("/outside/canary")));
    let mut l = Layer::new();
    l.raw_link(tar::EntryType::Symlink, "evil", &outside_dir)
        .raw_file("evil/canary", b"pwned");
    cases.push(("symlink to the canary's directory", l, inside(&canary)));
    let mut l = Layer::new();
    l.raw_link(tar::EntryType::Symlink, "evil", &canary)
        .raw_file("evil", b"pwned");
    cases.push(("file over a symlink to the canary", l, inside("/evil")));
    let mut l = Layer::new();
    l.raw_link(tar::EntryType::Link, "link", &canary)
        .raw_file("link", b"pwned");
    cases.push((
        "hard link to the canary",
        l,
        Err(|e| matches!(e, UnpackError::BadHardLink { .. })),
    ));
    let mut l = Layer::new();
    l.raw_link(tar::EntryType::Link, "link", up)
        .raw_file("link", b"pwned");
    cases.push((
        "hard link up",
        l,
        Err(|e| matches!(e, UnpackError::BadHardLink { .. })),
    ));
    let mut l = Layer::new();
    l.raw_link(tar::EntryType::Symlink, "evil", &outside_dir)
        .raw_link(tar::EntryType::Link, "link", "evil/canary")
        .raw_file("link", b"pwned");
    cases.push((
        "hard link through a symlink",
        l,
        Err(|e| matches!(e, UnpackError::BadHardLink { .. })),
    ));

    for (i, (what, layer, expect)) in cases.into_iter().enumerate() {
        let name = format!("hostile.local/escape:{i}");
        let (_, built) = import_and_build(&store, &layers_dir, &name, &layer.tar());
        match expect {
            Ok(path) => {
                let image = built.unwrap_or_else(|e| panic!("{what}: {}", chain(&e)));
                assert_eq!(Ext4Image::new(&image).read(&path), b"pwned", "{what}");
            }
            Err(refused) => {
                let error = unpack_error(built);
                assert!(refused(&error), "{what}: {error:?}");
            }
        }
        assert_eq!(
            std::fs::read(outside.join("canary")).unwrap(),
            b"original",
            "{what}: the host file was written"
        );
        let beside: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside, ["canary"], "{what}: something appeared outside");
        assert_no_leftovers(&store);
    }
    let mut top: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["layers", "outside", "store"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_bomb_is_refused_at_the_image_size_limit_and_the_pull_keeps_nothing() {
    let registry = Registry::start();
    let mut small = Layer::new();
    small.file("bin/app", 0o755, 0, 0, b"fine");
    let good = TestImage::new(vec![LayerBlob::gzip(small)], json!({"Cmd": ["/bin/app"]}));
    registry.push_image("hostile/bomb", "v1", &good);
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("images"));
    let reference = ImageRef::parse(&format!("{}/hostile/bomb:v1", registry.host())).unwrap();
    let options = PullOptions {
        credentials: CredentialSource::Anonymous,
        ..PullOptions::default()
    };
    let first = pull(&store, &reference, &options, |_| {}).await.unwrap();

    // 1 GiB of zeros in one file, about 1 MiB of gzip; then the tag moves to it.
    let bytes = gzip_bomb(1, 1 << 30);
    assert!(bytes.len() < 4 << 20, "{} bytes", bytes.len());
    let bomb = TestImage::new(
        vec![LayerBlob {
            bytes,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            diff_id: sha256(b"not checked"),
        }],
        json!({"Cmd": ["/bomb"]}),
    );
    registry.push_image("hostile/bomb", "v1", &bomb);
    let before = store.references().unwrap();
    let err = pull(&store, &reference, &options, |_| {})
        .await
        .unwrap_err();
    match &err {
        PullError::Build {
            source:
                BuildError::Unpack {
                    source: UnpackError::TooLarge { limit, .. },
                    ..
                },
            ..
        } => assert_eq!(*limit, 64 << 20),
        other => panic!("{other:?}"),
    }
    let text = chain(&err);
    assert!(
        text.contains(
            "past 67108864 bytes unpacked (64 MiB), the limit on an image's unpacked size"
        ),
        "{text}"
    );
    assert_eq!(
        store.references().unwrap(),
        before,
        "the tag still names the good image"
    );
    let bomb_manifest = aegis_image::Digest::parse(&bomb.manifest_digest()).unwrap();
    assert!(!store.base_image_path(&bomb_manifest).exists());
    assert!(store.base_image_path(&first.manifest_digest).is_file());
    assert_no_leftovers(&store);
}

#[test]
fn a_compressed_archive_that_expands_past_the_limit_is_refused_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("images"));
    let archive = dir.path().join("bomb.tar.gz");
    std::fs::write(&archive, gzip_bomb(1, 1 << 30)).unwrap();
    let err = import_archive(&store, &archive, &ImportOptions::default()).unwrap_err();
    assert!(
        matches!(err, ImportError::TooLarge { limit, .. } if limit == 64 << 20),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("decompresses to more than 67108864 bytes (64 MiB), the limit on an image's unpacked size"),
        "{err}"
    );
    assert_no_leftovers(&store);
}

#[test]
fn huge_extended_headers_are_refused_from_their_size_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("images"));
    let rows = [
        (tar::EntryType::XHeader, ExtendedHeader::Pax),
        (tar::EntryType::XGlobalHeader, ExtendedHeader::PaxGlobal),
        (tar::EntryType::GNULongName, ExtendedHeader::GnuLongName),
        (tar::EntryType::GNULongLink, ExtendedHeader::GnuLongLink),
    ];
    for (i, (kind, want)) in rows.into_iter().enumerate() {
        // 1 GiB claimed, 4 KiB present: refused from the header alone.
        let layer = huge_extended_header(kind, 1 << 30, 4096);
        let name = format!("hostile.local/header:{i}");
        let (_, built) = import_and_build(&store, dir.path(), &name, &layer);
        match unpack_error(built) {
            UnpackError::HeaderTooLarge { kind, size, .. } => {
                assert_eq!((kind, size), (want, 1 << 30))
            }
            other => panic!("{want}: {other:?}"),
        }
        assert_no_leftovers(&store);
    }

    // 1 GiB claimed and present (1 MiB of gzip): the tar crate would hold it all in memory.
    let layer = huge_extended_header(tar::EntryType::GNULongName, 1 << 30, 1 << 30);
    let (_, built) = import_and_build(&store, dir.path(), "hostile.local/header:real", &layer);
    let error = unpack_error(built);
    assert!(
        error.to_string().ends_with(
            "has a GNU long name header of 1073741824 bytes, more than the 1048576-byte limit on tar extended headers"
        ),
        "{error}"
    );
    assert!(
        peak_rss() < 512 << 20,
        "peak memory {} MiB",
        peak_rss() >> 20
    );
    assert_no_leftovers(&store);

    // The same header at the start of an image archive is refused while indexing it.
    let archive = dir.path().join("archive.tar.gz");
    std::fs::write(
        &archive,
        huge_extended_header(tar::EntryType::XHeader, 1 << 30, 4096),
    )
    .unwrap();
    let err = import_archive(&store, &archive, &ImportOptions::default()).unwrap_err();
    assert!(
        matches!(err, ImportError::HeaderTooLarge { kind: ExtendedHeader::Pax, size, .. } if size == 1 << 30),
        "{err:?}"
    );
    assert_no_leftovers(&store);
}

#[test]
fn too_many_entries_or_too_much_metadata_are_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("images"));

    // Within every limit: builds.
    let mut fine = Layer::new();
    for i in 0..500 {
        fine.file(&format!("files/{i}"), 0o644, 0, 0, b"");
    }
    let (_, built) = import_and_build(
        &store,
        dir.path(),
        "hostile.local/entries:fine",
        &fine.tar(),
    );
    built.unwrap();

    // 1,500 empty files against a limit of 1,000 (the default is 1,000,000).
    let mut many = Layer::new();
    for i in 0..1500 {
        many.file(&format!("files/{i}"), 0o644, 0, 0, b"");
    }
    let (_, built) = import_and_build(
        &store,
        dir.path(),
        "hostile.local/entries:many",
        &many.tar(),
    );
    let error = unpack_error(built);
    assert!(
        matches!(error, UnpackError::TooManyEntries { limit: 1000, .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .ends_with("takes the image past 1000 entries, the limit on the files in an image"),
        "{error}"
    );
    assert_no_leftovers(&store);

    // One entry whose path creates 1,200 directories on the way (their paths, 1.4 MB in all,
    // would cross the metadata limit first: lift it).
    let roomy = store.clone().with_unpack_limits(UnpackLimits {
        max_metadata_bytes: 64 << 20,
        ..TEST_LIMITS
    });
    let mut deep = Layer::new();
    deep.file(&format!("{}f", "d/".repeat(1200)), 0o644, 0, 0, b"");
    let (_, built) = import_and_build(
        &roomy,
        dir.path(),
        "hostile.local/entries:deep",
        &deep.tar(),
    );
    let error = unpack_error(built);
    assert!(
        matches!(error, UnpackError::TooManyEntries { limit: 1000, .. }),
        "{error:?}"
    );

    // 400 names of 200 bytes against 64 KiB of metadata.
    let mut long = Layer::new();
    for i in 0..400 {
        long.file(&format!("{i:03}{}", "n".repeat(197)), 0o644, 0, 0, b"");
    }
    let (_, built) = import_and_build(
        &store,
        dir.path(),
        "hostile.local/entries:long",
        &long.tar(),
    );
    let error = unpack_error(built);
    assert!(
        matches!(error, UnpackError::TooMuchMetadata { limit, .. } if limit == 64 << 10),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("past 65536 bytes (64 KiB), the limit on an image's metadata"),
        "{error}"
    );
    assert_no_leftovers(&store);
}

/// A store holding one image under `reference`, so that a failed pull must leave it alone.
fn store_with_previous(dir: &Path, reference: &ImageRef) -> ImageStore {
    let store = store_at(&dir.join("images"));
    let mut layer = Layer::new();
    layer.file("previous", 0o644, 0, 0, b"kept");
    let path = dir.join("previous.tar");
    std::fs::write(&path, layer.tar()).unwrap();
    import_rootfs_tar(&store, &path, reference, &ImageConfig::default()).unwrap();
    store
}

fn fast_fail(stall_timeout: Duration, deadline: Duration) -> PullOptions {
    PullOptions {
        credentials: CredentialSource::Anonymous,
        base_image: BaseImagePolicy::Skip,
        stall_timeout,
        deadline,
        ..PullOptions::default()
    }
}

/// A one-layer test image and the routes that serve it; `manifest`, `config` and `layer`
/// replace what is served for each.
fn serve_image(
    registry: &HostileRegistry,
    image: &TestImage,
    manifest: Option<Body>,
    config: Option<Body>,
    layer: Option<Body>,
) {
    registry.route(
        "/v2/hostile/app/manifests/v1",
        MEDIA_MANIFEST,
        manifest.unwrap_or_else(|| Body::Bytes(image.manifest_bytes())),
    );
    registry.route(
        &format!("/v2/hostile/app/blobs/{}", sha256(&image.config_bytes())),
        MEDIA_CONFIG,
        config.unwrap_or_else(|| Body::Bytes(image.config_bytes())),
    );
    registry.route(
        &format!("/v2/hostile/app/blobs/{}", image.layers[0].digest()),
        "application/octet-stream",
        layer.unwrap_or_else(|| Body::Bytes(image.layers[0].bytes.clone())),
    );
}

fn one_layer_image() -> TestImage {
    let mut layer = Layer::new();
    layer.file("bin/app", 0o755, 0, 0, &[7u8; 100_000]);
    TestImage::new(vec![LayerBlob::plain(layer)], json!({"Cmd": ["/bin/app"]}))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_manifest_is_refused_from_its_length_and_while_reading() {
    let registry = HostileRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let reference = ImageRef::parse(&format!("{}/hostile/app:v1", registry.host())).unwrap();
    let store = store_with_previous(dir.path(), &reference);
    let before = store.references().unwrap();
    let options = fast_fail(Duration::from_secs(20), Duration::from_secs(60));
    let image = one_layer_image();

    for body in [
        // Announced: refused before the body is read.
        Body::Claims {
            claimed: 100 << 20,
            sent: b"{".to_vec(),
        },
        // Not announced (chunked): refused as soon as it passes 4 MiB.
        Body::Endless { total: 100 << 20 },
    ] {
        serve_image(&registry, &image, Some(body), None, None);
        let err = pull(&store, &reference, &options, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::ManifestTooLarge { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "registry {} sent a manifest for {reference} larger than 4194304 bytes, the limit on manifests",
                registry.host()
            )
        );
        assert_eq!(store.references().unwrap(), before);
        assert_no_leftovers(&store);
    }
    assert!(
        peak_rss() < 512 << 20,
        "peak memory {} MiB",
        peak_rss() >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_config_is_refused_by_its_descriptor_and_while_reading() {
    // By descriptor, from a real registry: a 17 MiB config, truthfully declared.
    let registry = Registry::start();
    let image = one_layer_image();
    let big_config = vec![b' '; 17 << 20];
    let config_digest = registry.push_blob("hostile/config", &big_config);
    let layer_digest = registry.push_blob("hostile/config", &image.layers[0].bytes);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": big_config.len()},
        "layers": [{"mediaType": image.layers[0].media_type, "digest": layer_digest, "size": image.layers[0].bytes.len()}],
    }))
    .unwrap();
    registry.push_manifest("hostile/config", "v1", &manifest, MEDIA_MANIFEST);
    let dir = tempfile::tempdir().unwrap();
    let reference = ImageRef::parse(&format!("{}/hostile/config:v1", registry.host())).unwrap();
    let store = store_with_previous(dir.path(), &reference);
    let before = store.references().unwrap();
    let options = fast_fail(Duration::from_secs(20), Duration::from_secs(60));
    let err = pull(&store, &reference, &options, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::ConfigTooLarge { size, .. } if size == 17 << 20),
        "{err:?}"
    );
    assert!(
        err.to_string().ends_with(
            "declares 17825792 bytes, more than the 16777216-byte limit on image configs"
        ),
        "{err}"
    );
    assert_eq!(
        registry.count_requests("GET", "/v2/hostile/config/blobs/"),
        0,
        "refused before asking for it"
    );
    assert_eq!(store.references().unwrap(), before);
    assert_no_leftovers(&store);

    // While reading, from a hostile registry: declared small, served 100 MiB.
    let hostile = HostileRegistry::start();
    let reference = ImageRef::parse(&format!("{}/hostile/app:v1", hostile.host())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_previous(dir.path(), &reference);
    let before = store.references().unwrap();
    serve_image(
        &hostile,
        &image,
        None,
        Some(Body::Endless { total: 100 << 20 }),
        None,
    );
    let err = pull(&store, &reference, &options, |_| {})
        .await
        .unwrap_err();
    let declared = image.config_bytes().len() as u64;
    assert!(
        matches!(err, PullError::Oversized { size, .. } if size == declared),
        "{err:?}"
    );
    assert_eq!(store.references().unwrap(), before);
    assert_no_leftovers(&store);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_registry_stalls_out_or_meets_the_deadline_and_the_pull_keeps_nothing() {
    let registry = HostileRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let reference = ImageRef::parse(&format!("{}/hostile/app:v1", registry.host())).unwrap();
    let store = store_with_previous(dir.path(), &reference);
    let before = store.references().unwrap();
    let image = one_layer_image();
    let drip = |bytes: Vec<u8>| Body::Drip {
        bytes,
        interval: Duration::from_secs(1),
    };

    // The manifest, one byte a second: below the minimum rate.
    serve_image(
        &registry,
        &image,
        Some(drip(image.manifest_bytes())),
        None,
        None,
    );
    let options = fast_fail(Duration::from_secs(2), Duration::from_secs(60));
    let err = pull(&store, &reference, &options, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::Stalled { stall_timeout, .. } if stall_timeout == Duration::from_secs(2)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "registry {} sent less than 32768 bytes in 2s while pulling {reference}, below the minimum transfer rate",
            registry.host()
        )
    );
    assert!(err.hint().unwrap().contains("aegis image import"));
    assert_eq!(store.references().unwrap(), before);

    // The same drip under a generous stall timeout meets the overall deadline.
    let options = fast_fail(Duration::from_secs(60), Duration::from_secs(3));
    let err = pull(&store, &reference, &options, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::DeadlineExceeded { deadline, .. } if deadline == Duration::from_secs(3)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "pull of {reference} from {} did not finish within 3s, the pull deadline",
            registry.host()
        )
    );
    assert_eq!(store.references().unwrap(), before);

    // A layer that drips, after a prompt manifest and config: its partial blob is removed.
    serve_image(
        &registry,
        &image,
        None,
        None,
        Some(drip(image.layers[0].bytes.clone())),
    );
    let options = fast_fail(Duration::from_secs(2), Duration::from_secs(60));
    let err = pull(&store, &reference, &options, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Stalled { .. }), "{err:?}");
    let layer = aegis_image::Digest::parse(&image.layers[0].digest()).unwrap();
    assert!(!store.has_blob(&layer));
    assert_eq!(store.references().unwrap(), before);
    assert_no_leftovers(&store);

    // Served promptly, the same image pulls.
    serve_image(&registry, &image, None, None, None);
    let record = pull(&store, &reference, &options, |_| {}).await.unwrap();
    assert_eq!(record.manifest_digest.to_string(), image.manifest_digest());
}

#[tokio::test]
async fn layers_declaring_more_than_the_size_limit_are_refused_before_any_download() {
    let registry = Registry::start();
    // 8 KiB that gzip cannot shrink, in a store that allows 4 KiB unpacked.
    let mut seed: u32 = 0x9E37_79B9;
    let noise: Vec<u8> = (0..8192)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed.to_le_bytes()[0]
        })
        .collect();
    let mut layer = Layer::new();
    layer.file("noise", 0o644, 0, 0, &noise);
    let image = TestImage::new(vec![LayerBlob::gzip(layer)], json!({"Cmd": ["/noise"]}));
    registry.push_image("hostile/wide", "v1", &image);
    let dir = tempfile::tempdir().unwrap();
    aegis_testkit::tool("mke2fs");
    let store = ImageStore::open(dir.path().join("images"))
        .unwrap()
        .with_unpack_limits(UnpackLimits {
            max_unpacked_bytes: 4096,
            ..TEST_LIMITS
        });
    let reference = ImageRef::parse(&format!("{}/hostile/wide:v1", registry.host())).unwrap();
    let options = PullOptions {
        credentials: CredentialSource::Anonymous,
        ..PullOptions::default()
    };
    let err = pull(&store, &reference, &options, |_| {})
        .await
        .unwrap_err();
    match &err {
        PullError::LayersTooLarge {
            declared, limit, ..
        } => {
            assert!(*declared > 4096, "{declared}");
            assert_eq!(*limit, 4096);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        chain(&err).contains("more than the 4096-byte limit on an image's unpacked size"),
        "{}",
        chain(&err)
    );
    let blobs = std::fs::read_dir(store.root().join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(blobs, 0, "a blob was kept from a refused pull");
    assert!(store.references().unwrap().is_empty());
    assert_no_leftovers(&store);
}
