//! What the CLI integration tests share: running the `ovkd` binary.

// Each test crate includes this module and uses its own subset of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs `ovkd --device cpu ARGS` from the repository root: whether it succeeded, and its
/// standard output and error together.
pub fn ovkd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ovkd"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// [`ovkd`], which must succeed; its output.
pub fn ok(args: &[&str]) -> String {
    let (success, text) = ovkd(args);
    assert!(success, "ovkd {args:?} failed:\n{text}");
    text
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
