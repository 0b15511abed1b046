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

/// Name of the file whose mtime records when a cache entry was last used.
const LAST_USED: &str = ".last-used";

/// Marks `current` (a directory directly under `parent`) as just used and
/// deletes all but the `keep` most recently used sibling directories.
///
/// Cache entries are keyed by content, so every patch or fragment edit makes
/// a new one (a Linux tree is 1.7 GB); without this the cache fills the disk.
/// Returns the directories removed.
pub fn keep_recent(parent: &Path, current: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(current)?;
    std::fs::write(current.join(LAST_USED), b"")
        .with_context(|| format!("marking {} as used", current.display()))?;
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(parent)
        .with_context(|| format!("listing {}", parent.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .map(|p| {
            // An entry without the marker predates it: treat it as oldest.
            let used = std::fs::metadata(p.join(LAST_USED))
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            (used, p)
        })
        .collect();
    // Newest first; the current entry always stays.
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut removed = Vec::new();
    let mut kept = 0;
    for (_, path) in entries {
        if path == current || kept < keep.saturating_sub(1) {
            if path != current {
                kept += 1;
            }
            continue;
        }
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("removing stale cache entry {}", path.display()))?;
        removed.push(path);
    }
    Ok(removed)
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

    #[test]
    fn keep_recent_removes_the_least_recently_used_but_never_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path();
        let ages = [("a", 40), ("b", 30), ("c", 20), ("d", 10)];
        for (name, secs_ago) in ages {
            let entry = parent.join(name);
            std::fs::create_dir_all(&entry).unwrap();
            let marker = File::create(entry.join(LAST_USED)).unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
            marker.set_modified(when).unwrap();
        }
        // No marker: predates the scheme, goes first.
        std::fs::create_dir_all(parent.join("legacy")).unwrap();
        // "a" is the oldest but is the one in use now.
        let removed = keep_recent(parent, &parent.join("a"), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(parent)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a", "d"]);
        assert_eq!(removed.len(), 3);
        // Asking to keep more than exist removes nothing.
        assert!(keep_recent(parent, &parent.join("d"), 5)
            .unwrap()
            .is_empty());
    }

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
