//! The tiny transformers fixture reproduced within 1e-4 on burn-flex.

use std::path::PathBuf;

use burn::tensor::Device;
use ovkd_teacher::parity::run_parity;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/clip/tiny")
        .join(name)
}

#[test]
fn tiny_clip_matches_transformers() {
    let dir = fixture("");
    let diffs = run_parity(
        &dir,
        &fixture("inputs.safetensors"),
        &fixture("expected.safetensors"),
        &Device::flex(),
    )
    .unwrap();
    assert_eq!(diffs.len(), 9, "{diffs:?}");
    for d in &diffs {
        eprintln!("{:28} {:?} {:.3e}", d.name, d.shape, d.max_abs_diff);
        assert!(d.max_abs_diff <= 1e-4, "{}: {}", d.name, d.max_abs_diff);
    }
}
