//! CLIP's BPE tokenizer through `tokenizers` reproduces transformers' ids exactly.

use std::path::PathBuf;

use ovkd_teacher::tokenizer::ClipTokenizer;

#[test]
fn clip_tokenizer_matches_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/clip_tokenizer");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_ids.json")).unwrap())
            .unwrap();
    let ctx = expected["context_length"].as_u64().unwrap() as usize;
    let tok = ClipTokenizer::from_file(&dir.join("tokenizer.json"), ctx).unwrap();
    assert_eq!(tok.sot() as u64, expected["sot"].as_u64().unwrap());
    assert_eq!(tok.eot() as u64, expected["eot"].as_u64().unwrap());
    let cases = expected["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    let mut truncated = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids77: Vec<u32> = serde_json::from_value(case["ids_truncated_77"].clone()).unwrap();
        assert_eq!(tok.encode_full(text).unwrap(), ids, "{text:?}");
        assert_eq!(tok.encode(text).unwrap(), ids77, "{text:?}");
        truncated += usize::from(ids.len() > ctx);
    }
    assert!(truncated > 0, "the fixture should exercise truncation");
    // The padded batch pads with the end token and records where each text ends.
    let texts: Vec<String> = cases
        .iter()
        .take(2)
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let batch = tok.encode_batch(&texts).unwrap();
    assert_eq!(batch.ids.len(), 2 * ctx);
    assert_eq!(batch.ids[batch.eot[0]], tok.eot() as i64);
    assert_eq!(batch.ids[ctx - 1], tok.eot() as i64);
}
