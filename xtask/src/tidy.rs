//! Repository rules that are cheaper as a test than as a review comment.
//! Runs with `cargo test` (and so in `cargo xtask test`'s unit-test gate).

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Lines of `text` before its test code (a file's `#[cfg(test)]` or
    /// `#[cfg(any(test, ...))]` items come last, by convention).
    fn production_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
        text.lines()
            .enumerate()
            .take_while(|(_, l)| !l.starts_with("#[cfg(test)]") && !l.starts_with("#[cfg(any(test"))
            .map(|(i, l)| (i + 1, l))
    }

    /// The hypervisor must not panic on anything a host or guest sends it:
    /// no unwrap/expect/panic! (or stubs) outside test code in hyp/.
    #[test]
    fn hyp_production_code_has_no_panicking_shortcuts() {
        let root = crate::project_root();
        let mut files = Vec::new();
        rust_files(&root.join("hyp"), &mut files);
        let test_file = |p: &Path| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            matches!(name, "tests.rs" | "proptests.rs" | "test_utils.rs")
                || p.components().any(|c| c.as_os_str() == "tests")
        };
        let banned = [
            ".unwrap()",
            ".expect(",
            "panic!(",
            "todo!(",
            "unimplemented!(",
            "dbg!(",
        ];
        let mut offences = Vec::new();
        for file in files.iter().filter(|p| !test_file(p)) {
            let text = std::fs::read_to_string(file).unwrap();
            for (line_no, line) in production_lines(&text) {
                let code = line.split("//").next().unwrap_or("");
                if let Some(b) = banned.iter().find(|b| code.contains(*b)) {
                    offences.push(format!(
                        "{}:{line_no}: {b}",
                        file.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
        assert!(
            offences.is_empty(),
            "panicking shortcuts in the hypervisor:\n{}",
            offences.join("\n")
        );
    }

    #[test]
    fn production_lines_stop_at_the_test_module() {
        let text = "fn a() {}\n#[cfg(test)]\nmod tests { fn b() { x.unwrap(); } }\n";
        assert_eq!(production_lines(text).count(), 1);
    }

    /// Every crate states its licence, and the kernel changes say GPL-2.0.
    #[test]
    fn licences_are_stated() {
        let root = crate::project_root();
        for krate in [
            "xtask",
            "hyp/core",
            "hyp/el2",
            "vmm",
            "guest-image/agent",
            "guest-image/conformance",
        ] {
            let toml = std::fs::read_to_string(root.join(krate).join("Cargo.toml")).unwrap();
            assert!(
                toml.contains("license.workspace = true"),
                "{krate}/Cargo.toml"
            );
        }
        let ws = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(ws.contains(r#"license = "MIT OR Apache-2.0""#));
        let kernel = std::fs::read_to_string(root.join("kernel-config/LICENSE")).unwrap();
        assert!(kernel.contains("GPL-2.0"));
    }
}
