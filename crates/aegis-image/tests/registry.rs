//! Pulls from a real registry on loopback (Debian's `docker-registry`): the issue's multi-layer
//! image end to end, the cache, multi-platform indexes, and each failure a user can meet —
//! not found, unauthorized, corrupt blob, unreachable — with the store left consistent.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod support;

use std::sync::{Arc, Mutex};

use aegis_image::{
    pull, BaseImagePolicy, CredentialSource, ImageRef, ImageStore, PullError, PullEvent,
    PullOptions, PullOutcome, PullPolicy,
};
use serde_json::json;
use support::debugfs::Ext4Image;
use support::image::{
    check_standard_config, check_standard_rootfs, index_entry, sha256, standard_image, LayerBlob,
    TestImage, MEDIA_INDEX, MEDIA_MANIFEST,
};
use support::layers::Layer;
use support::registry::{docker_config, Registry};

fn store() -> (tempfile::TempDir, ImageStore) {
    aegis_testkit::tool("mke2fs");
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    (dir, store)
}

fn anonymous() -> PullOptions {
    PullOptions {
        credentials: CredentialSource::Anonymous,
        ..PullOptions::default()
    }
}

/// Runs a pull, collecting its events.
async fn pull_collect(
    store: &ImageStore,
    reference: &str,
    options: &PullOptions,
) -> (Result<aegis_image::ImageRecord, PullError>, Vec<PullEvent>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let reference = ImageRef::parse(reference).unwrap();
    let result = pull(store, &reference, options, move |e| {
        sink.lock().unwrap().push(e)
    })
    .await;
    let events = events.lock().unwrap().clone();
    (result, events)
}

fn assert_no_leftovers(store: &ImageStore) {
    let tmp: Vec<_> = std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temporary files left behind: {tmp:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_4_pull_builds_the_image_and_a_second_pull_is_served_from_the_cache() {
    let registry = Registry::start();
    let image = standard_image();
    registry.push_image("aegis/test", "v1", &image);
    let (_dir, store) = store();
    let reference = format!("{}/aegis/test:v1", registry.host());

    let (record, events) = pull_collect(&store, &reference, &anonymous()).await;
    let record = record.unwrap();
    assert_eq!(record.manifest_digest.to_string(), image.manifest_digest());
    assert_eq!(record.reference.to_string(), reference);
    check_standard_config(&record.config);
    let base = store.base_image_path(&record.manifest_digest);
    assert!(base.is_file(), "pull built the base image");
    check_standard_rootfs(&Ext4Image::new(&base));

    // Events: resolving first, then each layer start..done, unpacking, done.
    assert_eq!(
        events.first(),
        Some(&PullEvent::Resolving {
            reference: record.reference.clone()
        })
    );
    for layer in &image.layers {
        let digest = aegis_image::Digest::parse(&layer.digest()).unwrap();
        let start = events.iter().position(|e| {
            *e == PullEvent::LayerStart {
                digest: digest.clone(),
                size: layer.bytes.len() as u64,
            }
        });
        let done = events.iter().position(|e| {
            *e == PullEvent::LayerDone {
                digest: digest.clone(),
            }
        });
        assert!(start.unwrap() < done.unwrap(), "{events:?}");
        assert!(events.contains(&PullEvent::LayerProgress {
            digest: digest.clone(),
            bytes: layer.bytes.len() as u64
        }));
    }
    let n = events.len();
    assert_eq!(
        events[n - 2],
        PullEvent::Unpacking {
            manifest: record.manifest_digest.clone()
        }
    );
    assert_eq!(
        events[n - 1],
        PullEvent::Done {
            manifest: record.manifest_digest.clone(),
            outcome: PullOutcome::Downloaded
        }
    );
    let blob_gets = registry.count_requests("GET", "/v2/aegis/test/blobs/");
    assert_eq!(
        blob_gets,
        3,
        "two layers and the config:\n{}",
        registry.log()
    );
    assert_no_leftovers(&store);

    // Second pull of the tag: one manifest request, no blob, no rebuild.
    let manifest_gets = registry.count_requests("GET", "/v2/aegis/test/manifests/");
    let base_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base).unwrap());
    let (again, events) = pull_collect(&store, &reference, &anonymous()).await;
    assert_eq!(again.unwrap(), record);
    assert_eq!(
        events,
        [
            PullEvent::Resolving {
                reference: record.reference.clone()
            },
            PullEvent::Done {
                manifest: record.manifest_digest.clone(),
                outcome: PullOutcome::Cached
            },
        ]
    );
    assert_eq!(
        registry.count_requests("GET", "/v2/aegis/test/blobs/"),
        blob_gets,
        "no blob fetched again"
    );
    assert_eq!(
        registry.count_requests("GET", "/v2/aegis/test/manifests/"),
        manifest_gets + 1
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base).unwrap()),
        base_inode
    );

    // IfMissing (what `run --image` uses) and a digest reference need no registry at all.
    let offline = PullOptions {
        policy: PullPolicy::IfMissing,
        ..anonymous()
    };
    let (cached, _) = pull_collect(&store, &reference, &offline).await;
    assert_eq!(cached.unwrap().manifest_digest, record.manifest_digest);
    let pinned = format!("{}/aegis/test@{}", registry.host(), record.manifest_digest);
    let (by_digest, _) = pull_collect(&store, &pinned, &anonymous()).await;
    assert_eq!(by_digest.unwrap().manifest_digest, record.manifest_digest);
    assert_eq!(
        registry.count_requests("GET", "/v2/aegis/test/manifests/"),
        manifest_gets + 1,
        "no request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_platform_index_resolves_to_the_host_and_shared_layers_are_fetched_once() {
    let registry = Registry::start();
    let mut shared = Layer::new();
    shared.file("shared", 0o644, 0, 0, b"same bytes in both images");
    let mut host_top = Layer::new();
    host_top.file("arch", 0o644, 0, 0, b"host");
    let host = TestImage::new(
        vec![LayerBlob::gzip(shared), LayerBlob::plain(host_top)],
        json!({"Cmd": ["host"]}),
    );
    let mut other_layer = Layer::new();
    other_layer.file("arch", 0o644, 0, 0, b"s390x");
    let mut other = TestImage::new(
        vec![LayerBlob::gzip(other_layer)],
        json!({"Cmd": ["other"]}),
    );
    other.architecture = "s390x".into();
    registry.push_image("multi/app", &host.manifest_digest(), &host);
    registry.push_image("multi/app", &other.manifest_digest(), &other);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            index_entry(MEDIA_MANIFEST, &other.manifest_bytes(), serde_json::Value::Null,
                Some(json!({"os": "linux", "architecture": "s390x"}))),
            index_entry(MEDIA_MANIFEST, &host.manifest_bytes(), serde_json::Value::Null,
                Some(json!({"os": "linux", "architecture": aegis_image::Platform::host().architecture}))),
        ],
    }))
    .unwrap();
    registry.push_manifest("multi/app", "latest", &index, MEDIA_INDEX);

    let (_dir, store) = store();
    let options = PullOptions {
        base_image: BaseImagePolicy::Skip,
        ..anonymous()
    };
    let (record, _) =
        pull_collect(&store, &format!("{}/multi/app", registry.host()), &options).await;
    let record = record.unwrap();
    assert_eq!(record.manifest_digest.to_string(), host.manifest_digest());
    assert_eq!(record.config.cmd, ["host"]);
    assert!(
        !store.base_image_path(&record.manifest_digest).exists(),
        "Skip builds nothing"
    );
    let img = Ext4Image::new(&store.base_image(&record).unwrap());
    assert_eq!(img.read("/arch"), b"host");
    assert_eq!(img.read("/shared"), b"same bytes in both images");
    let s390x_layer = aegis_image::Digest::parse(&other.layers[0].digest()).unwrap();
    assert!(
        !store.has_blob(&s390x_layer),
        "other platforms are not downloaded"
    );

    // A second image sharing the bottom layer: that layer comes from the store.
    let mut top = Layer::new();
    top.file("arch", 0o644, 0, 0, b"second");
    let mut shared_again = Layer::new();
    shared_again.file("shared", 0o644, 0, 0, b"same bytes in both images");
    let second = TestImage::new(
        vec![LayerBlob::gzip(shared_again), LayerBlob::plain(top)],
        json!({"Cmd": ["second"]}),
    );
    assert_eq!(second.layers[0].digest(), host.layers[0].digest());
    registry.push_image("multi/second", "v1", &second);
    let (record2, events) = pull_collect(
        &store,
        &format!("{}/multi/second:v1", registry.host()),
        &options,
    )
    .await;
    record2.unwrap();
    let shared_digest = aegis_image::Digest::parse(&host.layers[0].digest()).unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, PullEvent::LayerCached { digest, .. } if *digest == shared_digest)));
    assert_eq!(
        registry.count_requests(
            "GET",
            &format!("/v2/multi/second/blobs/{}", host.layers[0].digest())
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_is_not_found_and_names_the_reference() {
    let registry = Registry::start();
    registry.push_image("aegis/exists", "v1", &standard_image());
    let (_dir, store) = store();
    for missing in ["aegis/nothing:v1", "aegis/exists:nope"] {
        let reference = format!("{}/{missing}", registry.host());
        let (result, _) = pull_collect(&store, &reference, &anonymous()).await;
        let err = result.unwrap_err();
        assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "image {reference} not found in registry {}",
                registry.host()
            )
        );
        assert!(err.hint().is_some());
    }
    assert!(store.list().unwrap().is_empty());
    assert_no_leftovers(&store);
}

/// Issue 19: an image whose layer is refused (here a whiteout naming `..`) keeps nothing: the
/// tag that pointed at a good image still does, and a new tag is not created.
#[tokio::test(flavor = "multi_thread")]
async fn issue_19_a_refused_layer_leaves_the_references_as_they_were() {
    let registry = Registry::start();
    let good = standard_image();
    registry.push_image("aegis/app", "v1", &good);
    let mut layer = Layer::new();
    layer.file("etc/keep", 0o644, 0, 0, b"k");
    layer.raw_file(".wh...", b"");
    let bad = TestImage::new(vec![LayerBlob::plain(layer)], json!({}));
    let (_dir, store) = store();
    let v1 = format!("{}/aegis/app:v1", registry.host());
    pull_collect(&store, &v1, &anonymous()).await.0.unwrap();

    registry.push_image("aegis/app", "v1", &bad);
    registry.push_image("aegis/app", "v2", &bad);
    for reference in [&v1, &format!("{}/aegis/app:v2", registry.host())] {
        let (result, _) = pull_collect(&store, reference, &anonymous()).await;
        let err = result.unwrap_err();
        let mut chain = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            chain.push_str(&format!(": {c}"));
            cause = c.source();
        }
        assert!(chain.contains("names no entry"), "{chain}");
    }
    let refs: Vec<(String, String)> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|r| (r.reference.to_string(), r.manifest_digest.to_string()))
        .collect();
    assert_eq!(refs, [(v1, good.manifest_digest())]);
    assert_no_leftovers(&store);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auth_registry_needs_credentials_from_the_docker_config() {
    let registry = Registry::start_with_htpasswd("aegis", "s3cret");
    let image = standard_image();
    registry.push_image("private/app", "v1", &image);
    let (dir, store) = store();
    let reference = format!("{}/private/app:v1", registry.host());

    let (result, _) = pull_collect(&store, &reference, &anonymous()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("registry {} refused access to {reference}", registry.host())
    );
    assert!(
        err.hint()
            .unwrap()
            .contains(&format!("docker login {}", registry.host())),
        "{:?}",
        err.hint()
    );

    let wrong = docker_config(dir.path(), &registry.host(), "aegis", "wrong");
    let options = PullOptions {
        credentials: CredentialSource::DockerConfigFile(wrong.clone()),
        ..anonymous()
    };
    let (result, _) = pull_collect(&store, &reference, &options).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, PullError::Unauthorized { credentials_from: Some(ref p), .. } if *p == wrong),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("were rejected"));
    assert!(store.list().unwrap().is_empty());

    let right = docker_config(
        dir.path(),
        &format!("http://{}", registry.host()),
        "aegis",
        "s3cret",
    );
    let options = PullOptions {
        credentials: CredentialSource::DockerConfigFile(right),
        ..anonymous()
    };
    let (result, _) = pull_collect(&store, &reference, &options).await;
    let record = result.unwrap();
    check_standard_config(&record.config);
    check_standard_rootfs(&Ext4Image::new(&store.base_image(&record).unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_blob_is_a_digest_mismatch_and_leaves_nothing_in_the_cache() {
    let registry = Registry::start();
    let image = standard_image();
    registry.push_image("aegis/corrupt", "v1", &image);
    // Flip a byte of the top layer inside the registry's storage: it still serves the blob under
    // its original digest.
    let bad_layer = image.layers[1].digest();
    let stored = registry.stored_blob(&bad_layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();

    let (_dir, store) = store();
    let reference = format!("{}/aegis/corrupt:v1", registry.host());
    let (result, _) = pull_collect(&store, &reference, &anonymous()).await;
    let err = result.unwrap_err();
    match &err {
        PullError::DigestMismatch { digest, .. } => assert_eq!(digest.to_string(), bad_layer),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(&bad_layer), "{err}");
    let bad = aegis_image::Digest::parse(&bad_layer).unwrap();
    assert!(!store.has_blob(&bad), "the corrupt blob was not stored");
    assert!(store.list().unwrap().is_empty(), "no reference");
    let manifest = aegis_image::Digest::parse(&image.manifest_digest()).unwrap();
    assert!(
        store
            .lookup(
                &ImageRef::parse(&format!("{}/aegis/corrupt@{manifest}", registry.host())).unwrap()
            )
            .unwrap()
            .is_none(),
        "no record"
    );
    assert!(!store.base_image_path(&manifest).exists());
    assert_no_leftovers(&store);

    // After the registry is repaired, the same pull succeeds.
    std::fs::write(&stored, &image.layers[1].bytes).unwrap();
    let (result, _) = pull_collect(&store, &reference, &anonymous()).await;
    assert_eq!(result.unwrap().manifest_digest, manifest);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_is_reported_as_such() {
    let (_dir, store) = store();
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reference = format!("localhost:{port}/aegis/app:v1");
    let (result, events) = pull_collect(&store, &reference, &anonymous()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot reach registry localhost:{port}")
    );
    assert!(err.hint().unwrap().contains("aegis image import"));
    assert_eq!(events.len(), 1, "only Resolving: {events:?}");
    let _ = sha256(b"");
}

/// The daemon spawns pulls on its runtime: the future must be `Send`.
#[test]
fn the_pull_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let reference = ImageRef::parse("localhost:1/x").unwrap();
    let options = PullOptions::default();
    let future = pull(&store, &reference, &options, |_| {});
    assert_send(&future);
}
