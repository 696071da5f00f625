//! The tokenizer: `tokenizer.json` through the `tokenizers` crate, plus what `tokenizer_config.json`
//! adds (chat template, BOS/EOS token strings).
//!
//! Encoding with `add_special_tokens = true` matches the Python `tokenizers` package's default, id
//! for id (checked against the golden fixture). [`IncrementalDecoder`] turns a growing list of ids
//! into text deltas without ever emitting half a UTF-8 character.

use super::ModelError;
use serde_json::Value;
use std::path::Path;

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::bad(&path, "file is missing"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::bad(&path, e.to_string()))?;
        let mut t = Tokenizer {
            inner,
            chat_template: None,
            bos_token: None,
            eos_token: None,
        };
        let cfg = dir.join("tokenizer_config.json");
        if cfg.exists() {
            let text = std::fs::read_to_string(&cfg).map_err(|e| ModelError::io(&cfg, e))?;
            let v: Value =
                serde_json::from_str(&text).map_err(|e| ModelError::bad(&cfg, e.to_string()))?;
            t.chat_template = match v.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(a)) => a
                    .iter()
                    .find(|x| x["name"] == "default")
                    .and_then(|x| x["template"].as_str())
                    .map(str::to_string),
                _ => None,
            };
            t.bos_token = token_str(v.get("bos_token"));
            t.eos_token = token_str(v.get("eos_token"));
        }
        Ok(t)
    }

    /// Token ids of `text`; `add_special` runs the post-processor (e.g. prepends BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// Text of `ids`, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.inner.decode(ids, skip_special).unwrap_or_default()
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Emits only the text that the newest ids complete.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    sent: usize,
}

impl IncrementalDecoder {
    /// The new text since the last call, given all output ids so far; holds back a trailing
    /// incomplete character (decoded as U+FFFD).
    pub fn next(&mut self, tok: &Tokenizer, ids: &[u32]) -> String {
        let text = tok.decode(ids, true);
        if text.ends_with('\u{FFFD}') || text.len() < self.sent || !text.is_char_boundary(self.sent)
        {
            return String::new();
        }
        let delta = text[self.sent..].to_string();
        self.sent = text.len();
        delta
    }
}
