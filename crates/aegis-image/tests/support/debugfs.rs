//! Reads an ext4 image with `debugfs -R`, the way a reviewer would check it by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `debugfs stat` says about an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeStat {
    /// `regular`, `directory`, `symlink`, `character special`, `FIFO`, ...
    pub kind: String,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub links: u32,
    /// For fast symlinks.
    pub link_target: Option<String>,
    /// For device nodes.
    pub device: Option<(u32, u32)>,
}

/// An ext4 image file opened read-only through debugfs.
pub struct Ext4Image {
    path: PathBuf,
    debugfs: PathBuf,
}

fn quote(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

impl Ext4Image {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            debugfs: aegis_testkit::tool("debugfs"),
        }
    }

    fn request(&self, request: &str) -> (Vec<u8>, String) {
        let out = Command::new(&self.debugfs)
            .arg("-R")
            .arg(request)
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "debugfs -R {request:?} failed: {out:?}"
        );
        (
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `None` when the path does not exist.
    pub fn stat(&self, path: &str) -> Option<InodeStat> {
        let (stdout, stderr) = self.request(&format!("stat {}", quote(path)));
        if stderr.contains("File not found") {
            return None;
        }
        let text = String::from_utf8_lossy(&stdout).into_owned();
        let field = |name: &str| -> Option<String> {
            let start = text.find(name)? + name.len();
            Some(text[start..].split_whitespace().next()?.to_owned())
        };
        let kind_start = text.find("Type: ").expect("stat prints a type") + 6;
        let kind = text[kind_start..]
            .split("   ")
            .next()
            .unwrap()
            .trim()
            .to_owned();
        let device = text.find("Device major/minor number: ").map(|i| {
            let s = &text[i + 27..];
            let (major, rest) = s.split_once(':').unwrap();
            let minor = rest.split_whitespace().next().unwrap();
            (major.trim().parse().unwrap(), minor.parse().unwrap())
        });
        let link_target = text.find("Fast link dest: \"").map(|i| {
            let s = &text[i + 17..];
            s[..s.find('"').unwrap()].to_owned()
        });
        Some(InodeStat {
            kind,
            mode: u32::from_str_radix(&field("Mode: ")?, 8).unwrap(),
            uid: field("User: ")?.parse().unwrap(),
            gid: field("Group: ")?.parse().unwrap(),
            links: field("Links: ")?.parse().unwrap(),
            link_target,
            device,
        })
    }

    /// The contents of a regular file.
    pub fn read(&self, path: &str) -> Vec<u8> {
        self.request(&format!("cat {}", quote(path))).0
    }

    /// The value of an xattr, as debugfs prints it.
    pub fn xattr(&self, path: &str, name: &str) -> Option<Vec<u8>> {
        let (stdout, stderr) = self.request(&format!("ea_get {} {}", quote(path), quote(name)));
        if !stderr.trim().lines().all(|l| l.starts_with("debugfs ")) {
            return None;
        }
        Some(stdout)
    }

    /// Names in a directory (without `.` and `..`).
    pub fn list(&self, dir: &str) -> Vec<String> {
        let (stdout, _) = self.request(&format!("ls -p {}", quote(dir)));
        let mut names: Vec<String> = String::from_utf8_lossy(&stdout)
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_owned))
            .filter(|n| n != "." && n != ".." && !n.is_empty())
            .collect();
        names.sort();
        names
    }
}
