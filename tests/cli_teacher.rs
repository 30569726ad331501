//! `ovkd teacher parity` and `ovkd teacher tokenize` from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn parity(device: &str, tol: &str) -> std::process::Output {
    let tiny = root().join("fixtures/clip/tiny");
    Command::new(env!("CARGO_BIN_EXE_ovkd"))
        .args(["--device", device, "teacher", "parity", "--checkpoint"])
        .arg(&tiny)
        .arg("--inputs")
        .arg(tiny.join("inputs.safetensors"))
        .arg("--expected")
        .arg(tiny.join("expected.safetensors"))
        .args(["--tol", tol])
        .output()
        .unwrap()
}

fn assert_parity_passes(device: &str) {
    let out = parity(device, "1e-4");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "image_embeds",
        "logits_per_image",
        "vision_last_hidden_state",
        "text_pooled",
    ] {
        assert!(stdout.contains(name), "{stdout}");
    }
    assert!(stdout.contains(&format!("device: {device}")), "{stdout}");
}

#[test]
fn parity_passes_on_the_tiny_fixture_and_fails_below_its_error() {
    assert_parity_passes("cpu");
    // No float32 implementation reproduces every value bit for bit.
    let out = parity("cpu", "1e-12");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeds --tol"));
}

/// The second backend: LibTorch on the CPU, only in a binary built with `--features tch`
/// (`LIBTORCH_USE_PYTORCH=1`, and LibTorch's libraries on `LD_LIBRARY_PATH` to run).
#[cfg(feature = "tch")]
#[test]
fn parity_passes_on_tch_cpu() {
    assert_parity_passes("tch-cpu");
}

#[test]
fn tokenize_prints_ids_per_line_and_as_json() {
    let tok = root().join("fixtures/clip_tokenizer/tokenizer.json");
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovkd"));
        cmd.args(["teacher", "tokenize", "--tokenizer"]).arg(&tok);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let long = "a ".repeat(100);
        write!(child.stdin.take().unwrap(), "a photo of a cat.\n{long}\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let lines = run(false);
    let first = lines.lines().next().unwrap();
    assert_eq!(first, "49406 320 1125 539 320 2368 269 49407");
    let json: Vec<Vec<u32>> = serde_json::from_str(&run(true)).unwrap();
    assert_eq!(json.len(), 2);
    assert_eq!(json[1].len(), 77);
    assert_eq!(json[1][76], 49407);
}
