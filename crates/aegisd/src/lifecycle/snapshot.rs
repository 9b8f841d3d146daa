//! Snapshots of stopped instances: where the files live, the manifest written beside the memory
//! file, and the check that decides whether a snapshot may be restored.
//!
//! A snapshot is restorable only onto exactly what it was taken with: the same kernel, initramfs,
//! image, VMM program, memory and vCPUs, and the disk overlay untouched since. The manifest
//! records all of that; anything that differs, or a memory file of the wrong size, makes the
//! snapshot unusable and the instance cold-boots. The actor decides when to save, restore and
//! discard; the VMM streams the state out and in, and this module seals it on its way to the
//! memory file and opens it on its way back ([`crate::secrets::seal_stream`]): guest memory
//! holds the instance's secrets and whatever else the guest was given, so it is never on disk in
//! clear. Its one-time key is in the manifest, wrapped by the master key.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use aegis_proto::api::SnapshotView;
use aegis_vmm::{SnapshotInfo, SnapshotSource, Vm, VmSpec};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::secrets::{open_stream, seal_stream, SecretStore, StreamError, WrappedKey};

/// Directory of an instance's snapshot, inside its instance directory.
const SNAPSHOT_DIR: &str = "snapshot";
/// The VMM's memory and device state, sealed.
const MEMORY_FILE: &str = "memory.sealed";
/// The manifest; written last, so a snapshot without one is incomplete.
const MANIFEST_FILE: &str = "manifest.json";
/// Version of the manifest layout; another version is never restored. 2: sealed memory file.
const MANIFEST_FORMAT: u32 = 2;
/// Pipe between the VMM's stream and the sealing, in bytes.
const PIPE_BYTES: usize = 1 << 20;

/// A memory file just written.
#[derive(Debug)]
pub struct Saved {
    /// What the VMM wrote.
    pub info: SnapshotInfo,
    /// The sealed file's size.
    pub size_bytes: u64,
    /// Its key, wrapped by the master key.
    pub key: WrappedKey,
}

/// What a key is bound to: the instance, so a snapshot cannot be moved to another one.
fn purpose(instance_id: &str) -> String {
    format!("snapshot:{instance_id}")
}

/// The files of one instance's snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    /// The directory holding both files.
    pub dir: PathBuf,
    /// The memory file.
    pub memory: PathBuf,
    /// The manifest.
    pub manifest: PathBuf,
}

impl SnapshotFiles {
    /// The snapshot files of the instance whose directory is `instance_dir`.
    pub fn new(instance_dir: &Path) -> SnapshotFiles {
        let dir = instance_dir.join(SNAPSHOT_DIR);
        SnapshotFiles {
            memory: dir.join(MEMORY_FILE),
            manifest: dir.join(MANIFEST_FILE),
            dir,
        }
    }

    /// The manifest, if a complete snapshot exists.
    pub fn load(&self) -> Option<Manifest> {
        let text = std::fs::read(&self.manifest).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes the snapshot (nothing to do when there is none).
    pub fn discard(&self) {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => tracing::debug!(dir = %self.dir.display(), "snapshot discarded"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove snapshot")
            }
        }
    }

    /// Writes the memory file: the state of the paused `vm`, sealed under a fresh key.
    ///
    /// # Errors
    /// Why not, for a log line (the caller discards what was written).
    pub async fn save(
        &self,
        vm: &dyn Vm,
        secrets: &SecretStore,
        instance_id: &str,
    ) -> Result<Saved, String> {
        let (stream_key, key) = secrets
            .new_stream_key(&purpose(instance_id))
            .await
            .map_err(|e| format!("no key to seal it with: {e}"))?;
        let file = tokio::fs::File::create(&self.memory)
            .await
            .map_err(|e| format!("cannot create {}: {e}", self.memory.display()))?;
        let (vm_end, sealing_end) = tokio::io::duplex(PIPE_BYTES);
        let (written, sealed) = tokio::join!(
            vm.snapshot(Box::new(vm_end)),
            seal_stream(
                &stream_key,
                sealing_end,
                tokio::io::BufWriter::with_capacity(PIPE_BYTES, file)
            )
        );
        // A failed write of the file (a full disk) breaks the VMM's stream too: say the cause.
        let size_bytes =
            sealed.map_err(|e| format!("cannot write {}: {e}", self.memory.display()))?;
        let info = written.map_err(|e| crate::images::error_chain(&e))?;
        // On disk before the manifest that makes it restorable is written.
        let synced = async { tokio::fs::File::open(&self.memory).await?.sync_all().await };
        synced
            .await
            .map_err(|e| format!("cannot write {}: {e}", self.memory.display()))?;
        Ok(Saved {
            info,
            size_bytes,
            key,
        })
    }

    /// The plaintext state of the memory file described by `manifest`, as a source for the
    /// VMM, and the task opening it: when a restore fails, its error (if any) says why.
    ///
    /// # Errors
    /// When the key does not open or the file cannot be opened.
    pub async fn open_state(
        &self,
        manifest: &Manifest,
        secrets: &SecretStore,
        instance_id: &str,
    ) -> Result<(SnapshotSource, JoinHandle<Result<u64, StreamError>>), String> {
        let stream_key = secrets
            .open_stream_key(&purpose(instance_id), &manifest.key)
            .await
            .map_err(|e| e.to_string())?;
        let file = tokio::fs::File::open(&self.memory)
            .await
            .map_err(|e| format!("cannot open {}: {e}", self.memory.display()))?;
        let (opening_end, vm_end) = tokio::io::duplex(PIPE_BYTES);
        let opening = tokio::spawn(async move {
            let input = tokio::io::BufReader::with_capacity(PIPE_BYTES, file);
            open_stream(&stream_key, input, opening_end).await
        });
        Ok((Box::new(vm_end), opening))
    }

    /// Writes the manifest of a memory file just written.
    ///
    /// # Errors
    /// When the overlay cannot be examined or the manifest not written.
    pub fn write_manifest(
        &self,
        fingerprint: Fingerprint,
        overlay: &Path,
        extra_disks: &[PathBuf],
        saved: &Saved,
    ) -> std::io::Result<Manifest> {
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            created_at: crate::logs::now_ts(),
            fingerprint,
            overlay: FileStamp::of(overlay)?,
            extra_disks: extra_disks
                .iter()
                .map(|d| FileStamp::of(d))
                .collect::<std::io::Result<_>>()?,
            size_bytes: saved.size_bytes,
            write_ms: u64::try_from(saved.info.took.as_millis()).unwrap_or(u64::MAX),
            key: saved.key.clone(),
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        crate::durable::write(&self.manifest, &text, 0o600)?;
        Ok(manifest)
    }

    /// Whether the snapshot may be restored onto a VM with `now` and the disk `overlay`.
    ///
    /// # Errors
    /// [`Unusable`] saying why not.
    pub fn check(
        &self,
        now: &Fingerprint,
        overlay: &Path,
        extra_disks: &[PathBuf],
    ) -> Result<Manifest, Unusable> {
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let text = std::fs::read(&self.manifest).map_err(|_| Unusable::NoManifest)?;
        let bad = |e: serde_json::Error| Unusable::BadManifest(e.to_string());
        let format = serde_json::from_slice::<Format>(&text).map_err(bad)?.format;
        if format != MANIFEST_FORMAT {
            return Err(Unusable::BadManifest(format!(
                "format {format} (expected {MANIFEST_FORMAT}), from another version of Aegis"
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&text).map_err(bad)?;
        let size = std::fs::metadata(&self.memory)
            .map_err(|_| Unusable::MissingMemory)?
            .len();
        if size != manifest.size_bytes {
            return Err(Unusable::Truncated {
                expected: manifest.size_bytes,
                actual: size,
            });
        }
        if let Some(what) = manifest.fingerprint.differs_from(now) {
            return Err(Unusable::Changed(what));
        }
        if !FileStamp::of(overlay).is_ok_and(|stamp| stamp == manifest.overlay) {
            return Err(Unusable::Changed("the disk overlay"));
        }
        let disks: Vec<Option<FileStamp>> =
            extra_disks.iter().map(|d| FileStamp::of(d).ok()).collect();
        if disks.len() != manifest.extra_disks.len()
            || disks
                .iter()
                .zip(&manifest.extra_disks)
                .any(|(now, then)| now.as_ref() != Some(then))
        {
            return Err(Unusable::Changed("the workspace volume"));
        }
        Ok(manifest)
    }
}

/// Why a snapshot cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// No manifest (never completed).
    #[error("its manifest is missing")]
    NoManifest,
    /// The manifest cannot be read.
    #[error("its manifest is unreadable: {0}")]
    BadManifest(String),
    /// The memory file is gone.
    #[error("its memory file is missing")]
    MissingMemory,
    /// The memory file has the wrong size.
    #[error("its memory file has {actual} bytes instead of {expected}")]
    Truncated {
        /// Recorded size.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// Something it depends on changed.
    #[error("{0} changed since it was taken")]
    Changed(&'static str),
}

/// A file's identity: path, size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
}

impl FileStamp {
    /// The stamp of `path` now.
    ///
    /// # Errors
    /// When the file cannot be examined.
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Ok(FileStamp {
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// What a VM was started from; a snapshot is restored only when this is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The kernel image.
    pub kernel: FileStamp,
    /// The initramfs (its name carries a hash of its content).
    pub initramfs: PathBuf,
    /// Manifest digest of the instance's image.
    pub image_digest: Option<String>,
    /// The VMM program (path, size, mtime, version).
    pub vmm: String,
    /// Guest memory.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Accelerator.
    pub accelerator: String,
}

impl Fingerprint {
    /// The fingerprint of a VM started with `spec`.
    ///
    /// # Errors
    /// When the kernel cannot be examined.
    pub fn of(
        spec: &VmSpec,
        image_digest: Option<String>,
        vmm: String,
    ) -> std::io::Result<Fingerprint> {
        Ok(Fingerprint {
            kernel: FileStamp::of(&spec.kernel.image)?,
            initramfs: spec.initramfs.clone(),
            image_digest,
            vmm,
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            accelerator: spec.accelerator.as_str().to_owned(),
        })
    }

    /// The first thing that differs from `now`, named for a log line.
    pub fn differs_from(&self, now: &Fingerprint) -> Option<&'static str> {
        if self.kernel != now.kernel {
            Some("the guest kernel")
        } else if self.initramfs != now.initramfs {
            Some("the initramfs (guest harness)")
        } else if self.image_digest != now.image_digest {
            Some("the image")
        } else if self.vmm != now.vmm {
            Some("the VMM program")
        } else if self.memory_mib != now.memory_mib || self.vcpus != now.vcpus {
            Some("the VM size")
        } else if self.accelerator != now.accelerator {
            Some("the accelerator")
        } else {
            None
        }
    }
}

/// The manifest written beside a memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// RFC 3339 time the snapshot was taken.
    pub created_at: String,
    /// What the VM ran with.
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
    /// The disk overlay right after the VM ended.
    pub overlay: FileStamp,
    /// The VM's other writable disks (a workspace volume) right after it ended.
    #[serde(default)]
    pub extra_disks: Vec<FileStamp>,
    /// Size of the memory file.
    pub size_bytes: u64,
    /// How long writing it took.
    pub write_ms: u64,
    /// The memory file's key, wrapped by the master key and bound to the instance.
    pub key: WrappedKey,
}

impl Manifest {
    /// The API view.
    pub fn view(&self) -> SnapshotView {
        SnapshotView {
            size_bytes: self.size_bytes,
            created_at: self.created_at.clone(),
        }
    }
}

/// Total size of the snapshots under `instances_dir` (one directory per instance).
pub fn total_bytes(instances_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(instances_dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::metadata(SnapshotFiles::new(&e.path()).memory).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(dir: &Path) -> Fingerprint {
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"kernel").unwrap();
        Fingerprint {
            kernel: FileStamp::of(&kernel).unwrap(),
            initramfs: dir.join("initramfs-abc.cpio"),
            image_digest: Some("sha256:1".into()),
            vmm: "qemu 10".into(),
            memory_mib: 256,
            vcpus: 1,
            accelerator: "tcg".into(),
        }
    }

    #[test]
    fn a_snapshot_is_usable_only_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(tmp.path());
        assert_eq!(
            files.check(&fingerprint(tmp.path()), tmp.path(), &[]),
            Err(Unusable::NoManifest)
        );
        std::fs::create_dir_all(&files.dir).unwrap();
        std::fs::write(&files.memory, vec![1u8; 100]).unwrap();
        let overlay = tmp.path().join("root.qcow2");
        std::fs::write(&overlay, b"disk").unwrap();
        let fp = fingerprint(tmp.path());
        let info = Saved {
            info: SnapshotInfo {
                bytes: 80,
                took: std::time::Duration::from_millis(5),
            },
            size_bytes: 100,
            key: WrappedKey {
                nonce: "00".into(),
                ciphertext: "11".into(),
            },
        };
        let volume = tmp.path().join("workspace.ext4");
        std::fs::write(&volume, b"volume").unwrap();
        let disks = [volume.clone()];
        files
            .write_manifest(fp.clone(), &overlay, &disks, &info)
            .unwrap();
        assert!(files.check(&fp, &overlay, &disks).is_ok());
        assert_eq!(
            files.check(&fp, &overlay, &[]),
            Err(Unusable::Changed("the workspace volume"))
        );
        std::fs::write(&volume, b"volume written elsewhere").unwrap();
        assert_eq!(
            files.check(&fp, &overlay, &disks),
            Err(Unusable::Changed("the workspace volume"))
        );
        files
            .write_manifest(fp.clone(), &overlay, &[], &info)
            .unwrap();
        assert!(files.check(&fp, &overlay, &[]).is_ok());
        assert_eq!(files.load().unwrap().view().size_bytes, 100);
        assert!(total_bytes(tmp.path().parent().unwrap()) >= 100);

        let changed = Fingerprint {
            vmm: "qemu 11".into(),
            ..fp.clone()
        };
        assert_eq!(
            files.check(&changed, &overlay, &[]),
            Err(Unusable::Changed("the VMM program"))
        );
        let changed = Fingerprint {
            image_digest: None,
            ..fp.clone()
        };
        assert_eq!(
            files.check(&changed, &overlay, &[]),
            Err(Unusable::Changed("the image"))
        );
        std::fs::write(&overlay, b"disk changed").unwrap();
        assert_eq!(
            files.check(&fp, &overlay, &[]),
            Err(Unusable::Changed("the disk overlay"))
        );
        std::fs::write(&files.memory, vec![1u8; 10]).unwrap();
        assert_eq!(
            files.check(&fp, &overlay, &[]),
            Err(Unusable::Truncated {
                expected: 100,
                actual: 10
            })
        );
        files.discard();
        assert!(files.load().is_none());
        assert_eq!(files.check(&fp, &overlay, &[]), Err(Unusable::NoManifest));
    }
}
