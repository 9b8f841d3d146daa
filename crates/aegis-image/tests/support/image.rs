//! Assembles test images from layers: config, OCI manifest, and the two archive formats
//! (OCI image layout, `docker save`).

use std::path::Path;

use serde_json::{json, Value};
use sha2::Digest as _;

use super::debugfs::Ext4Image;
use super::layers::Layer;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// One layer as stored: blob bytes, media type and the digest of its uncompressed tar.
pub struct LayerBlob {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

impl LayerBlob {
    pub fn plain(layer: Layer) -> Self {
        let bytes = layer.tar();
        Self {
            diff_id: sha256(&bytes),
            bytes,
            media_type: "application/vnd.oci.image.layer.v1.tar",
        }
    }

    pub fn gzip(layer: Layer) -> Self {
        let tar = layer.tar();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        Self {
            diff_id: sha256(&tar),
            bytes: gz.finish().unwrap(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }

    pub fn zstd(layer: Layer) -> Self {
        let tar = layer.tar();
        Self {
            diff_id: sha256(&tar),
            bytes: zstd::encode_all(tar.as_slice(), 3).unwrap(),
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn digest(&self) -> String {
        sha256(&self.bytes)
    }
}

/// A test image: layers plus the `config` object of its image config.
pub struct TestImage {
    pub layers: Vec<LayerBlob>,
    pub settings: Value,
    pub architecture: String,
}

impl TestImage {
    pub fn new(layers: Vec<LayerBlob>, settings: Value) -> Self {
        Self {
            layers,
            settings,
            architecture: aegis_image::Platform::host().architecture,
        }
    }

    pub fn config_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "created": "2024-05-06T07:08:09Z",
            "config": self.settings,
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    pub fn manifest_bytes(&self) -> Vec<u8> {
        let config = self.config_bytes();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": l.media_type, "digest": l.digest(), "size": l.bytes.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    pub fn manifest_digest(&self) -> String {
        sha256(&self.manifest_bytes())
    }

    /// Every blob (layers, config, manifest) with its digest.
    pub fn blobs(&self) -> Vec<(String, Vec<u8>)> {
        let mut blobs: Vec<(String, Vec<u8>)> = self
            .layers
            .iter()
            .map(|l| (l.digest(), l.bytes.clone()))
            .collect();
        let config = self.config_bytes();
        blobs.push((sha256(&config), config));
        let manifest = self.manifest_bytes();
        blobs.push((sha256(&manifest), manifest));
        blobs
    }

    /// Writes an OCI image layout into `dir`; `annotations` go on the index entry.
    pub fn write_oci_layout(&self, dir: &Path, annotations: Value) {
        write_layout(
            dir,
            &self.blobs(),
            &[index_entry(
                MEDIA_MANIFEST,
                &self.manifest_bytes(),
                annotations,
                None,
            )],
        );
    }

    /// A `docker save` archive (old layout: `<id>/layer.tar`, `<config-hex>.json`).
    pub fn docker_save_tar(&self, repo_tags: &[&str]) -> Vec<u8> {
        let config = self.config_bytes();
        let config_name = format!("{}.json", &sha256(&config)[7..]);
        let mut builder = tar::Builder::new(Vec::new());
        let mut layer_names = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            // docker save stores layers uncompressed; decompress what the test built.
            let tar = decompress(&layer.bytes);
            let name = format!("layer{i:02}/layer.tar");
            append(&mut builder, &name, &tar);
            layer_names.push(name);
        }
        append(&mut builder, &config_name, &config);
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": repo_tags,
            "Layers": layer_names,
        }]);
        append(
            &mut builder,
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        builder.into_inner().unwrap()
    }
}

pub fn index_entry(
    media_type: &str,
    manifest: &[u8],
    annotations: Value,
    platform: Option<Value>,
) -> Value {
    let mut entry = json!({
        "mediaType": media_type,
        "digest": sha256(manifest),
        "size": manifest.len(),
    });
    if !annotations.is_null() {
        entry["annotations"] = annotations;
    }
    if let Some(platform) = platform {
        entry["platform"] = platform;
    }
    entry
}

/// Writes `oci-layout`, `index.json` listing `entries`, and the blobs.
pub fn write_layout(dir: &Path, blobs: &[(String, Vec<u8>)], entries: &[Value]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    for (digest, bytes) in blobs {
        std::fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
    }
}

pub fn append(builder: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    builder.append_data(&mut h, name, data).unwrap();
}

pub fn append_symlink(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_mtime(0);
    builder.append_link(&mut h, name, target).unwrap();
}

/// Tars up a directory (for OCI layout archives).
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap()
}

fn decompress(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(bytes).unwrap();
    } else {
        out = bytes.to_vec();
    }
    out
}

/// The image the issue asks for: layer 1 has /etc/deleted-me, a file owned by 1000:1000, a
/// setuid-root file and a symlink; layer 2 whites out /etc/deleted-me and makes /opt/data opaque.
/// gzip below, zstd on top; the config sets Env, WorkingDir, User, Entrypoint and Cmd.
pub fn standard_image() -> TestImage {
    let mut l1 = Layer::new();
    l1.dir("etc", 0o755, 0, 0)
        .file("etc/deleted-me", 0o644, 0, 0, b"delete me")
        .file("etc/os-release", 0o644, 0, 0, b"ID=aegis-test\n")
        .dir("home/app", 0o750, 1000, 1000)
        .file("home/app/notes.txt", 0o640, 1000, 1000, b"owned by app")
        .file(
            "usr/bin/setuid-tool",
            0o4755,
            0,
            0,
            b"#!/bin/sh\necho setuid\n",
        )
        .symlink("usr/bin/tool-link", "setuid-tool")
        .file("opt/data/old-1", 0o644, 0, 0, b"old")
        .file("opt/data/sub/old-2", 0o644, 0, 0, b"old");
    let mut l2 = Layer::new();
    l2.whiteout("etc/deleted-me")
        .dir("opt/data", 0o755, 0, 0)
        .opaque("opt/data")
        .file("opt/data/new", 0o644, 0, 0, b"new");
    TestImage::new(
        vec![LayerBlob::gzip(l1), LayerBlob::zstd(l2)],
        json!({
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello"],
            "WorkingDir": "/home/app",
            "User": "1000:1000",
            "Entrypoint": ["/usr/bin/setuid-tool"],
            "Cmd": ["--default"],
        }),
    )
}

/// The benchmarks' image (`benches/pull.rs` here, `benches/images.rs` of the CLI): `layers` gzip
/// layers holding about `total_mb` MiB in all, in files of 1 MiB that gzip shrinks to about half.
/// Returns it with the size of its files, uncompressed.
pub fn bench_image(layers: usize, total_mb: usize) -> (TestImage, usize) {
    let files_per_layer = (total_mb / layers).max(1);
    let mut blobs = Vec::new();
    let mut uncompressed = 0;
    for l in 0..layers {
        let mut layer = Layer::new();
        for f in 0..files_per_layer {
            let data = half_compressible((l * 10_000 + f) as u64);
            uncompressed += data.len();
            layer.file(&format!("data/layer{l}/file{f:04}"), 0o644, 0, 0, &data);
        }
        blobs.push(LayerBlob::gzip(layer));
    }
    let image = TestImage::new(blobs, json!({"Cmd": ["/bin/true"]}));
    (image, uncompressed)
}

/// 1 MiB that gzip shrinks to about half: random bytes alternating with runs of one letter.
fn half_compressible(seed: u64) -> Vec<u8> {
    const BYTES: usize = 1 << 20;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(BYTES);
    while out.len() < BYTES {
        for _ in 0..512 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        let letter = b'a' + u8::try_from(state % 26).unwrap();
        out.extend(std::iter::repeat_n(letter, 4096));
    }
    out.truncate(BYTES);
    out
}

/// Asserts the base image of [`standard_image`] is what its layers say.
pub fn check_standard_rootfs(img: &Ext4Image) {
    assert!(
        img.stat("/etc/deleted-me").is_none(),
        "the whiteout removed /etc/deleted-me"
    );
    assert_eq!(img.read("/etc/os-release"), b"ID=aegis-test\n");
    let notes = img.stat("/home/app/notes.txt").unwrap();
    assert_eq!((notes.uid, notes.gid, notes.mode), (1000, 1000, 0o640));
    let home = img.stat("/home/app").unwrap();
    assert_eq!((home.uid, home.gid, home.mode), (1000, 1000, 0o750));
    let tool = img.stat("/usr/bin/setuid-tool").unwrap();
    assert_eq!((tool.uid, tool.gid, tool.mode), (0, 0, 0o4755));
    let link = img.stat("/usr/bin/tool-link").unwrap();
    assert_eq!(link.kind, "symlink");
    assert_eq!(link.link_target.as_deref(), Some("setuid-tool"));
    assert_eq!(
        img.list("/opt/data"),
        ["new"],
        "the opaque marker hid the lower entries"
    );
}

/// Asserts the config of [`standard_image`] was parsed.
pub fn check_standard_config(config: &aegis_image::ImageConfig) {
    assert_eq!(
        config.env,
        ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello"]
    );
    assert_eq!(config.working_dir.as_deref(), Some("/home/app"));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.entrypoint, ["/usr/bin/setuid-tool"]);
    assert_eq!(config.cmd, ["--default"]);
}
