//! Text → token ids through the `tokenizers` crate, as CLIP feeds its text tower: start and
//! end tokens, truncation to the context length that keeps the end token, padding.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::TeacherError;

/// A batch of padded token ids: [B, L] row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// Ids, `batch * len` of them.
    pub ids: Vec<i64>,
    /// B.
    pub batch: usize,
    /// L (the context length).
    pub len: usize,
    /// Position of each row's end-of-text token.
    pub eot: Vec<usize>,
}

/// A CLIP tokenizer read from a `tokenizer.json`.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    context_length: usize,
    sot: u32,
    eot: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("context_length", &self.context_length)
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .finish()
    }
}

impl ClipTokenizer {
    /// Reads `tokenizer.json`; the start and end ids are what its post-processor adds around
    /// an empty text. `context_length` is the text tower's (77 for CLIP).
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self, TeacherError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TeacherError::format(path, format!("not a tokenizer.json: {e}")))?;
        let empty = inner
            .encode("", true)
            .map_err(|e| TeacherError::format(path, e.to_string()))?;
        let ids = empty.get_ids();
        if ids.len() != 2 {
            return Err(TeacherError::format(
                path,
                format!(
                    "the post-processor should add a start and an end token; an empty text gives {ids:?}"
                ),
            ));
        }
        if context_length < 2 {
            return Err(TeacherError::format(
                path,
                "context length must be at least 2",
            ));
        }
        Ok(Self {
            inner,
            context_length,
            sot: ids[0],
            eot: ids[1],
        })
    }

    /// Start-of-text id.
    pub fn sot(&self) -> u32 {
        self.sot
    }

    /// End-of-text id (also used for padding, as transformers' CLIP tokenizer does).
    pub fn eot(&self) -> u32 {
        self.eot
    }

    /// Context length L.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of one text with start and end tokens, without truncation.
    pub fn encode_full(&self, text: &str) -> Result<Vec<u32>, TeacherError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TeacherError::Tokenizer(format!("{text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of one text, truncated to the context length with the end token kept last; no
    /// padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TeacherError> {
        let mut ids = self.encode_full(text)?;
        if ids.len() > self.context_length {
            ids.truncate(self.context_length - 1);
            ids.push(self.eot);
        }
        Ok(ids)
    }

    /// A padded batch [B, L] with L = the context length.
    pub fn encode_batch(&self, texts: &[String]) -> Result<TokenBatch, TeacherError> {
        let l = self.context_length;
        let mut ids = Vec::with_capacity(texts.len() * l);
        let mut eot = Vec::with_capacity(texts.len());
        for t in texts {
            let row = self.encode(t)?;
            eot.push(row.len() - 1);
            ids.extend(row.iter().map(|&i| i as i64));
            ids.extend(std::iter::repeat_n(self.eot as i64, l - row.len()));
        }
        Ok(TokenBatch {
            ids,
            batch: texts.len(),
            len: l,
            eot,
        })
    }
}

/// Writes a word-level `tokenizer.json` (lower-casing, whitespace and punctuation splitting,
/// `<start> $A <end>` template) whose vocabulary is every word in `texts`. Ids: 0 `<unk>`,
/// then words sorted, then `<start>` and `<end>` last, so the end id is the highest, as in
/// CLIP's own vocabulary.
pub fn build_word_level(texts: &[String], path: &Path) -> Result<ClipWordVocab, TeacherError> {
    let mut words: BTreeMap<String, ()> = BTreeMap::new();
    for t in texts {
        for w in split_words(t) {
            words.insert(w, ());
        }
    }
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for (i, w) in words.keys().enumerate() {
        vocab.insert(w.clone(), (i + 1).into());
    }
    let start = words.len() + 1;
    let end = words.len() + 2;
    vocab.insert("<start>".into(), start.into());
    vocab.insert("<end>".into(), end.into());
    let added = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(0, "<unk>"), added(start, "<start>"), added(end, "<end>")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<start>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<end>", "type_id": 0}}
            ],
            "pair": [
                {"SpecialToken": {"id": "<start>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": "<end>", "type_id": 0}}
            ],
            "special_tokens": {
                "<start>": {"id": "<start>", "ids": [start], "tokens": ["<start>"]},
                "<end>": {"id": "<end>", "ids": [end], "tokens": ["<end>"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let text = serde_json::to_string_pretty(&json).expect("json");
    crate::io::write_atomic(path, text.as_bytes())?;
    Ok(ClipWordVocab {
        vocab_size: end + 1,
        sot: start as i64,
        eot: end as i64,
    })
}

/// What [`build_word_level`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipWordVocab {
    /// Number of ids.
    pub vocab_size: usize,
    /// `<start>` id.
    pub sot: i64,
    /// `<end>` id (the highest).
    pub eot: i64,
}

/// Lower-cased words and punctuation runs, as the `Whitespace` pre-tokenizer splits
/// (`\w+|[^\w\s]+`).
fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_word: Option<bool> = None;
    for ch in text.to_lowercase().chars() {
        if ch.is_whitespace() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur_word = None;
            continue;
        }
        let is_word = ch.is_alphanumeric() || ch == '_';
        if cur_word.is_some_and(|w| w != is_word) && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
        cur_word = Some(is_word);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_level_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let texts = vec![
            "A red star left of a small blue ring.".to_string(),
            "two hearts".to_string(),
        ];
        let v = build_word_level(&texts, &path).unwrap();
        let tok = ClipTokenizer::from_file(&path, 8).unwrap();
        assert_eq!(tok.sot() as i64, v.sot);
        assert_eq!(tok.eot() as i64, v.eot);
        assert_eq!(tok.vocab_size(), v.vocab_size);
        let ids = tok.encode("a Red star").unwrap();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[0] as i64, v.sot);
        assert_eq!(*ids.last().unwrap() as i64, v.eot);
        assert!(ids[1..4].iter().all(|&i| i != 0), "known words: {ids:?}");
        // Unknown word → <unk>; truncation keeps the end token.
        let ids = tok
            .encode("a purple star of a blue ring ring ring")
            .unwrap();
        assert_eq!(ids.len(), 8);
        assert_eq!(ids[2], 0);
        assert_eq!(*ids.last().unwrap() as i64, v.eot);
    }
}
