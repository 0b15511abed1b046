//! Content hashes and build stamps.
//!
//! Each stage computes a key from everything it reads (file contents, tool
//! versions, options). The key is stored in a stamp file next to its outputs;
//! a stage whose key and outputs are unchanged is skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a large file, remembered by (path, size, mtime) in `memo` so a
/// no-op build does not re-read a 150 MB tarball.
pub fn sha256_file_memo(memo: &Path, path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let id = format!("{}|{}|{mtime}", path.display(), meta.len());
    let mut table: BTreeMap<String, String> = std::fs::read_to_string(memo)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(hash) = table.get(&id) {
        return Ok(hash.clone());
    }
    let hash = sha256_file(path)?;
    table.insert(id, hash.clone());
    if let Some(dir) = memo.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(memo, serde_json::to_string_pretty(&table)?)?;
    Ok(hash)
}

/// Builds a cache key from labelled parts; order matters.
#[derive(Debug, Default)]
pub struct KeyBuilder {
    hasher: Sha256,
}

impl KeyBuilder {
    pub fn new(domain: &str) -> Self {
        let mut k = KeyBuilder::default();
        k.add("domain", domain.as_bytes());
        k
    }

    /// Adds a labelled value (length-prefixed, so parts cannot run together).
    pub fn add(&mut self, label: &str, value: &[u8]) -> &mut Self {
        for part in [label.as_bytes(), value] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part);
        }
        self
    }

    pub fn add_str(&mut self, label: &str, value: &str) -> &mut Self {
        self.add(label, value.as_bytes())
    }

    /// Adds a file's name and contents.
    pub fn add_file(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.add_str(label, &name);
        Ok(self.add(label, &data))
    }

    pub fn finish(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

/// A stamp: the key the outputs in a directory were last built from.
#[derive(Debug, Clone)]
pub struct Stamp {
    path: PathBuf,
}

impl Stamp {
    pub fn new(stamps_dir: &Path, stage: &str) -> Self {
        Stamp {
            path: stamps_dir.join(format!("{stage}.key")),
        }
    }

    /// True when the recorded key equals `key` and every output exists.
    pub fn is_fresh(&self, key: &str, outputs: &[&Path]) -> bool {
        std::fs::read_to_string(&self.path).is_ok_and(|k| k.trim() == key)
            && outputs.iter().all(|p| p.exists())
    }

    /// Records `key`; call only after every output was written.
    pub fn record(&self, key: &str) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.path, key).with_context(|| format!("writing {}", self.path.display()))
    }

    /// Forgets the key, so the next build redoes the stage.
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// First 12 hex digits of a key, for messages and directory names.
pub fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_bytes(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[test]
    fn known_sha256() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_separate_parts_and_follow_content() {
        let a = KeyBuilder::new("t")
            .add_str("x", "ab")
            .add_str("y", "c")
            .finish();
        let b = KeyBuilder::new("t")
            .add_str("x", "a")
            .add_str("y", "bc")
            .finish();
        assert_ne!(a, b);
        let again = KeyBuilder::new("t")
            .add_str("x", "ab")
            .add_str("y", "c")
            .finish();
        assert_eq!(a, again);
    }

    #[test]
    fn stamp_is_fresh_only_with_same_key_and_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let stamp = Stamp::new(dir.path(), "s");
        assert!(!stamp.is_fresh("k1", &[&out]));
        std::fs::write(&out, "x").unwrap();
        stamp.record("k1").unwrap();
        assert!(stamp.is_fresh("k1", &[&out]));
        assert!(!stamp.is_fresh("k2", &[&out]));
        std::fs::remove_file(&out).unwrap();
        assert!(!stamp.is_fresh("k1", &[&out]));
    }

    #[test]
    fn memo_rehashes_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join("memo.json");
        let f = dir.path().join("f");
        std::fs::write(&f, "one").unwrap();
        assert_eq!(sha256_file_memo(&memo, &f).unwrap(), sha256_bytes(b"one"));
        std::fs::write(&f, "two!").unwrap();
        assert_eq!(sha256_file_memo(&memo, &f).unwrap(), sha256_bytes(b"two!"));
    }
}
