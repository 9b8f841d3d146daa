//! Offline imports: a root filesystem tarball (the set-up step's default image), OCI image
//! layouts (directory and archive, single- and multi-platform) and `docker save` archives.
//! Each imported image is built into an ext4 base image and checked with debugfs.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod support;

use std::io::Write;

use aegis_image::{
    import_archive, import_rootfs_tar, ImageConfig, ImageRef, ImageStore, ImportError,
    ImportOptions,
};
use serde_json::json;
use support::debugfs::Ext4Image;
use support::image::{
    append, append_symlink, check_standard_config, check_standard_rootfs, index_entry, sha256,
    standard_image, tar_dir, write_layout, LayerBlob, TestImage, MEDIA_INDEX, MEDIA_MANIFEST,
};
use support::layers::Layer;

fn store() -> (tempfile::TempDir, ImageStore) {
    aegis_testkit::tool("mke2fs");
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    (dir, store)
}

#[test]
fn a_rootfs_tarball_becomes_the_default_image() {
    let (dir, store) = store();
    let mut root = Layer::new();
    root.dir("./", 0o755, 0, 0)
        .file("bin/sh", 0o755, 0, 0, b"#!fake shell")
        .file("usr/bin/passwd", 0o4755, 0, 0, b"passwd")
        .dir("tmp", 0o1777, 0, 0)
        .char_device("dev/null", 0o666, 1, 3)
        .symlink("lib", "usr/lib");
    let tar_path = dir.path().join("base.tar");
    std::fs::write(&tar_path, root.tar()).unwrap();
    let reference = ImageRef::parse("aegis.local/default:latest").unwrap();
    let config = ImageConfig {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cmd: vec!["/bin/sh".into()],
        ..ImageConfig::default()
    };

    let record = import_rootfs_tar(&store, &tar_path, &reference, &config).unwrap();
    assert_eq!(record.reference.to_string(), "aegis.local/default:latest");
    assert_eq!(record.config, config);
    assert_eq!(record.layers.len(), 1);
    assert_eq!(
        record.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(store.lookup(&reference).unwrap().unwrap(), record);
    assert_eq!(store.list().unwrap(), vec![record.clone()]);

    // Importing the same file again changes nothing: same manifest digest.
    let again = import_rootfs_tar(&store, &tar_path, &reference, &config).unwrap();
    assert_eq!(again.manifest_digest, record.manifest_digest);

    let base = store.base_image(&record).unwrap();
    assert_eq!(
        base,
        store
            .root()
            .join(format!("rootfs/{}.ext4", record.manifest_digest.hex()))
    );
    let img = Ext4Image::new(&base);
    assert_eq!(img.stat("/usr/bin/passwd").unwrap().mode, 0o4755);
    assert_eq!(img.stat("/tmp").unwrap().mode, 0o1777);
    assert_eq!(img.stat("/dev/null").unwrap().device, Some((1, 3)));
    assert_eq!(img.read("/bin/sh"), b"#!fake shell");

    // Built once: the second call returns the same file untouched.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base).unwrap());
    assert_eq!(store.base_image(&record).unwrap(), base);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base).unwrap()),
        inode
    );
    assert!(std::fs::metadata(&base).unwrap().permissions().readonly());
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0,
        "no leftovers"
    );
}

#[test]
fn a_gzipped_rootfs_tarball_gets_the_gzip_media_type_and_diff_id() {
    let (dir, store) = store();
    let mut root = Layer::new();
    root.file("hello", 0o644, 0, 0, b"world");
    let plain = root.tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let tar_path = dir.path().join("base.tar.gz");
    std::fs::write(&tar_path, gz.finish().unwrap()).unwrap();
    let reference = ImageRef::parse("aegis.local/gz").unwrap();
    let record = import_rootfs_tar(&store, &tar_path, &reference, &ImageConfig::default()).unwrap();
    assert_eq!(
        record.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.blob_path(&record.config_digest)).unwrap())
            .unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&plain));
    let img = Ext4Image::new(&store.base_image(&record).unwrap());
    assert_eq!(img.read("/hello"), b"world");
}

#[test]
fn an_oci_layout_directory_and_archive_import_with_their_names() {
    let (dir, store) = store();
    let image = standard_image();
    let layout = dir.path().join("layout");
    image.write_oci_layout(
        &layout,
        json!({"org.opencontainers.image.ref.name": "example.com/team/app:1.0"}),
    );
    let records = import_archive(&store, &layout, &ImportOptions::default()).unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.reference.to_string(), "example.com/team/app:1.0");
    assert_eq!(record.manifest_digest.to_string(), image.manifest_digest());
    check_standard_config(&record.config);
    check_standard_rootfs(&Ext4Image::new(&store.base_image(record).unwrap()));

    // The same layout as a tar archive, named only by a tag: the repository comes from --tag.
    let tagged = dir.path().join("tagged");
    image.write_oci_layout(&tagged, json!({"org.opencontainers.image.ref.name": "2.0"}));
    let archive = dir.path().join("layout.tar");
    std::fs::write(&archive, tar_dir(&tagged)).unwrap();
    let options = ImportOptions {
        name: Some(ImageRef::parse("localhost/imported").unwrap()),
    };
    let records = import_archive(&store, &archive, &options).unwrap();
    assert_eq!(records[0].reference.to_string(), "localhost/imported:2.0");
    assert_eq!(
        records[0].manifest_digest, record.manifest_digest,
        "same content, same image"
    );

    // Without a name the tag alone is not enough.
    let err = import_archive(&store, &archive, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Unnamed { .. }), "{err}");
    assert!(err.hint().unwrap().contains("--tag"));
}

#[test]
fn a_multi_platform_layout_resolves_to_the_host_platform() {
    let (dir, store) = store();
    let mut host_layer = Layer::new();
    host_layer.file("arch", 0o644, 0, 0, b"host");
    let host = TestImage::new(vec![LayerBlob::gzip(host_layer)], json!({"Cmd": ["host"]}));
    let mut other_layer = Layer::new();
    other_layer.file("arch", 0o644, 0, 0, b"other");
    let mut other = TestImage::new(
        vec![LayerBlob::gzip(other_layer)],
        json!({"Cmd": ["other"]}),
    );
    other.architecture = "s390x".into();

    let host_platform = aegis_image::Platform::host();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            index_entry(MEDIA_MANIFEST, &other.manifest_bytes(), serde_json::Value::Null,
                Some(json!({"os": "linux", "architecture": "s390x"}))),
            index_entry(MEDIA_MANIFEST, &host.manifest_bytes(), serde_json::Value::Null,
                Some(json!({"os": "linux", "architecture": host_platform.architecture}))),
        ],
    }))
    .unwrap();
    let mut blobs = host.blobs();
    blobs.extend(other.blobs());
    blobs.push((sha256(&index), index.clone()));
    let layout = dir.path().join("multi");
    write_layout(
        &layout,
        &blobs,
        &[index_entry(
            MEDIA_INDEX,
            &index,
            json!({"io.containerd.image.name": "docker.io/library/multi:3"}),
            None,
        )],
    );
    let records = import_archive(&store, &layout, &ImportOptions::default()).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].reference.to_string(),
        "docker.io/library/multi:3"
    );
    assert_eq!(
        records[0].manifest_digest.to_string(),
        host.manifest_digest()
    );
    assert_eq!(records[0].config.cmd, ["host"]);
    let img = Ext4Image::new(&store.base_image(&records[0]).unwrap());
    assert_eq!(img.read("/arch"), b"host");

    // A single-platform image for another architecture is refused: a VM could not run it.
    let foreign = dir.path().join("foreign");
    other.write_oci_layout(
        &foreign,
        json!({"org.opencontainers.image.ref.name": "x.io/other:1"}),
    );
    let err = import_archive(&store, &foreign, &ImportOptions::default()).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("built for linux/s390x"), "{chain}");
    assert!(store
        .lookup(&ImageRef::parse("x.io/other:1").unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn a_docker_save_archive_imports_with_its_repo_tags() {
    let (dir, store) = store();
    let image = standard_image();
    let archive = dir.path().join("saved.tar");
    std::fs::write(
        &archive,
        image.docker_save_tar(&["example.com/saved:v1", "saved:latest"]),
    )
    .unwrap();
    let records = import_archive(&store, &archive, &ImportOptions::default()).unwrap();
    let names: Vec<String> = records.iter().map(|r| r.reference.to_string()).collect();
    assert_eq!(
        names,
        ["example.com/saved:v1", "docker.io/library/saved:latest"]
    );
    let record = &records[0];
    assert_eq!(record.layers.len(), 2);
    assert!(record
        .layers
        .iter()
        .all(|l| l.media_type == "application/vnd.docker.image.rootfs.diff.tar"));
    check_standard_config(&record.config);
    check_standard_rootfs(&Ext4Image::new(&store.base_image(record).unwrap()));

    // gzip-compressed archive of the same: same image.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(&archive).unwrap()).unwrap();
    let gz_path = dir.path().join("saved.tar.gz");
    std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    let again = import_archive(&store, &gz_path, &ImportOptions::default()).unwrap();
    assert_eq!(again[0].manifest_digest, record.manifest_digest);
}

#[test]
fn docker_save_layer_symlinks_are_followed_but_not_out_of_the_archive() {
    let (dir, store) = store();
    let mut layer = Layer::new();
    layer.file("same", 0o644, 0, 0, b"same");
    let blob = LayerBlob::plain(layer);
    let image = TestImage::new(vec![blob], json!({}));
    let config = image.config_bytes();
    let config_name = format!("{}.json", &sha256(&config)[7..]);

    // Old docker stores a repeated layer once and symlinks the others to it.
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, "aaa/layer.tar", &image.layers[0].bytes);
    append_symlink(&mut builder, "bbb/layer.tar", "../aaa/layer.tar");
    append(&mut builder, &config_name, &config);
    let manifest =
        json!([{"Config": config_name, "RepoTags": ["linked:1"], "Layers": ["bbb/layer.tar"]}]);
    append(
        &mut builder,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let archive = dir.path().join("linked.tar");
    std::fs::write(&archive, builder.into_inner().unwrap()).unwrap();
    let records = import_archive(&store, &archive, &ImportOptions::default()).unwrap();
    assert_eq!(
        records[0].layers[0].digest.to_string(),
        image.layers[0].digest()
    );

    // A symlink pointing outside the archive is not followed.
    let mut builder = tar::Builder::new(Vec::new());
    append_symlink(&mut builder, "bbb/layer.tar", "../../../etc/passwd");
    append(&mut builder, &config_name, &config);
    append(
        &mut builder,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let archive = dir.path().join("escape.tar");
    std::fs::write(&archive, builder.into_inner().unwrap()).unwrap();
    let err = import_archive(&store, &archive, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::MissingMember { .. }), "{err}");
}

#[test]
fn a_corrupt_blob_in_a_layout_is_refused_and_leaves_nothing() {
    let (dir, store) = store();
    let image = standard_image();
    let layout = dir.path().join("layout");
    image.write_oci_layout(
        &layout,
        json!({"org.opencontainers.image.ref.name": "example.com/bad:1"}),
    );
    let layer_digest = image.layers[1].digest();
    let path = layout.join("blobs/sha256").join(&layer_digest[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let err = import_archive(&store, &layout, &ImportOptions::default()).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains(&layer_digest), "{chain}");
    assert!(!store.has_blob(&aegis_image::Digest::parse(&layer_digest).unwrap()));
    assert!(store.list().unwrap().is_empty());
    assert!(store
        .lookup(&ImageRef::parse("example.com/bad:1").unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn not_an_image_is_a_clear_error() {
    let (dir, store) = store();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = import_archive(&store, &empty, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::NotAnImage { .. }), "{err}");
    let err = import_archive(
        &store,
        &dir.path().join("missing.tar"),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ImportError::Read { .. }), "{err}");
}

#[test]
fn concurrent_base_image_builds_produce_one_image() {
    let (dir, store) = store();
    let mut root = Layer::new();
    root.file("x", 0o644, 0, 0, b"x");
    let tar_path = dir.path().join("x.tar");
    std::fs::write(&tar_path, root.tar()).unwrap();
    let record = import_rootfs_tar(
        &store,
        &tar_path,
        &ImageRef::parse("t/x").unwrap(),
        &ImageConfig::default(),
    )
    .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = ImageStore::open(store.root()).unwrap();
            let record = record.clone();
            std::thread::spawn(move || store.base_image(&record).unwrap())
        })
        .collect();
    let paths: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        std::fs::read_dir(store.root().join("rootfs"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}
