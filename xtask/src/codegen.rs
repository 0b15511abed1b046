//! `cargo xtask codegen [--check]`: files generated from the one Rust
//! definition of an ABI.
//!
//! Today: the host kernel's `cloister_abi.h`, generated from
//! `hyp/core/src/abi.rs` and carried as a new file inside the host patch
//! series. `--check` (and the unit test below, so plain `cargo test` catches
//! drift) fails when the patch's copy differs from the generator.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the header lives in the kernel tree.
pub const ABI_HEADER_IN_TREE: &str = "drivers/virt/cloister/cloister_abi.h";

/// `cargo xtask codegen [--check]`
#[derive(Debug, clap::Args)]
pub struct Codegen {
    /// Fail instead of rewriting when a generated file is stale.
    #[arg(long)]
    check: bool,
}

impl Codegen {
    pub fn run(self) -> Result<()> {
        let root = crate::project_root();
        let (patch, fresh) = abi_header_status(&root)?;
        if fresh {
            println!(
                "{} is up to date in {}",
                ABI_HEADER_IN_TREE,
                patch.display()
            );
            return Ok(());
        }
        if self.check {
            bail!(
                "{ABI_HEADER_IN_TREE} in {} differs from hyp/core/src/abi.rs; run `cargo xtask codegen`",
                patch.display()
            );
        }
        let text = std::fs::read_to_string(&patch)?;
        let updated = replace_new_file(
            &text,
            ABI_HEADER_IN_TREE,
            &cloister_hyp_core::abi::c_header(),
        )?;
        std::fs::write(&patch, updated)?;
        println!("rewrote {ABI_HEADER_IN_TREE} in {}", patch.display());
        Ok(())
    }
}

/// The patch that creates the header, and whether its copy is current.
pub fn abi_header_status(root: &Path) -> Result<(PathBuf, bool)> {
    let dir = root.join("kernel-config/patches/host");
    for patch in crate::kernel::read_series(&dir)? {
        let text = std::fs::read_to_string(&patch)?;
        if let Some(current) = new_file_content(&text, ABI_HEADER_IN_TREE) {
            return Ok((patch, current == cloister_hyp_core::abi::c_header()));
        }
    }
    bail!("no patch in {} creates {ABI_HEADER_IN_TREE}", dir.display())
}

/// The body of a file a patch creates (`--- /dev/null` / `+++ b/<path>`).
pub fn new_file_content(patch: &str, path: &str) -> Option<String> {
    let (start, end) = new_file_hunk(patch, path)?;
    let body: String = patch[start..end]
        .lines()
        .skip(1) // the @@ line
        .map(|l| format!("{}\n", l.strip_prefix('+').unwrap_or(l)))
        .collect();
    Some(body)
}

/// Byte range of the single hunk that creates `path`, from its `@@` line to
/// the end of its `+` lines.
fn new_file_hunk(patch: &str, path: &str) -> Option<(usize, usize)> {
    let marker = format!("--- /dev/null\n+++ b/{path}\n");
    let at = patch.find(&marker)? + marker.len();
    let mut end = at;
    let mut lines = patch[at..].split_inclusive('\n');
    let first = lines.next()?;
    if !first.starts_with("@@ -0,0 +1") {
        return None;
    }
    end += first.len();
    for line in lines {
        if !line.starts_with('+') {
            break;
        }
        end += line.len();
    }
    Some((at, end))
}

/// Replaces the body of the file `path` that `patch` creates.
pub fn replace_new_file(patch: &str, path: &str, content: &str) -> Result<String> {
    let (start, end) =
        new_file_hunk(patch, path).with_context(|| format!("the patch does not create {path}"))?;
    let lines: Vec<&str> = content.lines().collect();
    let mut hunk = format!("@@ -0,0 +1,{} @@\n", lines.len());
    for line in lines {
        hunk.push('+');
        hunk.push_str(line);
        hunk.push('\n');
    }
    Ok(format!("{}{hunk}{}", &patch[..start], &patch[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATCH: &str = "Subject: x\n---\ndiff --git a/f.h b/f.h\nnew file mode 100644\n--- /dev/null\n+++ b/f.h\n@@ -0,0 +1,2 @@\n+old one\n+old two\ndiff --git a/g.c b/g.c\n--- a/g.c\n+++ b/g.c\n@@ -1 +1 @@\n-a\n+b\n-- \n2.39.5\n";

    #[test]
    fn reads_and_replaces_a_created_file() {
        assert_eq!(
            new_file_content(PATCH, "f.h").as_deref(),
            Some("old one\nold two\n")
        );
        assert_eq!(new_file_content(PATCH, "g.c"), None);
        let updated = replace_new_file(PATCH, "f.h", "new\n").unwrap();
        assert_eq!(new_file_content(&updated, "f.h").as_deref(), Some("new\n"));
        assert!(
            updated.contains("@@ -0,0 +1,1 @@\n+new\ndiff --git a/g.c"),
            "{updated}"
        );
    }

    /// The header in the host patch series is the generator's output: the
    /// C mirror of the ABI cannot drift from hyp/core/src/abi.rs.
    #[test]
    fn kernel_abi_header_matches_the_rust_abi() {
        let (patch, fresh) = abi_header_status(&crate::project_root()).unwrap();
        assert!(
            fresh,
            "{} is stale: run `cargo xtask codegen`",
            patch.display()
        );
    }
}
