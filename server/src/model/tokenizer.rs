//! The tokenizer: `tokenizer.json` through the `tokenizers` crate, plus what `tokenizer_config.json`
//! adds (chat template, BOS/EOS token strings). A `chat_template` given as a list of named
//! templates keeps every entry; the first is the default, as SGLang picks it.
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
    /// `(name, template)` of a `chat_template` list, in file order (empty for a single template).
    pub named_chat_templates: Vec<(String, String)>,
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
            named_chat_templates: Vec::new(),
            bos_token: None,
            eos_token: None,
        };
        let cfg = dir.join("tokenizer_config.json");
        if cfg.exists() {
            let text = std::fs::read_to_string(&cfg).map_err(|e| ModelError::io(&cfg, e))?;
            let v: Value =
                serde_json::from_str(&text).map_err(|e| ModelError::bad(&cfg, e.to_string()))?;
            match v.get("chat_template") {
                Some(Value::String(s)) => t.chat_template = Some(s.clone()),
                Some(Value::Array(a)) => {
                    t.named_chat_templates = a
                        .iter()
                        .filter_map(|x| Some((x["name"].as_str()?, x["template"].as_str()?)))
                        .map(|(n, s)| (n.to_string(), s.to_string()))
                        .collect();
                    t.chat_template = t.named_chat_templates.first().map(|(_, s)| s.clone());
                }
                _ => {}
            }
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

    /// Token ids of the pair (`a`, `b`) through the post-processor's pair template (a
    /// cross-encoder's input).
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode((a, b), true)
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

    /// The bytes of every id below `rows` (the model's logit rows; ids past the tokenizer's
    /// vocabulary, like special tokens, spell nothing), for constrained decoding.
    pub fn token_bytes(&self, rows: usize) -> crate::grammar::bytes::TokenBytes {
        use crate::grammar::bytes::{Spelling, TokenBytes};
        let spelling = match self.inner.get_decoder() {
            Some(tokenizers::DecoderWrapper::ByteLevel(_)) => Spelling::ByteLevel,
            _ => Spelling::Metaspace,
        };
        let added = self.inner.get_added_tokens_decoder();
        TokenBytes::build(rows.max(self.vocab_size()), spelling, |id| {
            if let Some(t) = added.get(&id) {
                return (!t.special).then(|| (t.content.clone(), true));
            }
            Some((self.inner.id_to_token(id)?, false))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_named_templates_is_kept_and_the_first_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        strata_make_model::make_model(&Default::default(), dir.path()).unwrap();
        let cfg = dir.path().join("tokenizer_config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v["chat_template"] = serde_json::json!([
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]);
        std::fs::write(&cfg, v.to_string()).unwrap();
        let t = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(
            t.chat_template.as_deref(),
            Some("T"),
            "SGLang takes the first"
        );
        let names: Vec<&str> = t
            .named_chat_templates
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["tool_use", "default"]);
    }
}
