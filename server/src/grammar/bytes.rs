//! The bytes each token stands for, which the grammar's DFA walks: byte-level BPE tokens
//! (GPT-2's byte-to-character table inverted), SentencePiece pieces (`▁` is a space, `<0xNN>` a
//! byte) and added tokens as their text; special tokens stand for no bytes (`None`).

/// Token id -> its bytes (`None`: a special token, never part of constrained text).
#[derive(Debug, Default)]
pub struct TokenBytes {
    tokens: Vec<Option<Vec<u8>>>,
}

/// How a vocabulary spells bytes in its token strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// GPT-2's byte-level alphabet (Llama 3, Qwen, GPT-2).
    ByteLevel,
    /// SentencePiece: `▁` for a space, `<0xNN>` byte fallback (Llama 2, Mistral).
    Metaspace,
}

/// GPT-2's table: the printable bytes stand for themselves, the others for 256 + n in order.
fn byte_level_table() -> std::collections::HashMap<char, u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut table = std::collections::HashMap::new();
    let mut n = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        table.insert(char::from_u32(c).expect("a valid char"), b as u8);
    }
    table
}

impl TokenBytes {
    /// The table of a vocabulary: `token(id)` gives each id's string and whether it is literal
    /// text (an added, non-special token), or `None` for a special token or an unused id.
    pub fn build(
        vocab: usize,
        spelling: Spelling,
        token: impl Fn(u32) -> Option<(String, bool)>,
    ) -> Self {
        let table = byte_level_table();
        let tokens = (0..vocab as u32)
            .map(|id| {
                let (s, literal) = token(id)?;
                if literal {
                    return Some(s.into_bytes());
                }
                match spelling {
                    ByteLevel => s.chars().map(|c| table.get(&c).copied()).collect(),
                    Metaspace => Some(metaspace(&s)),
                }
            })
            .collect();
        TokenBytes { tokens }
    }

    /// Straight from byte strings (tests).
    pub fn from_tokens(tokens: Vec<Option<Vec<u8>>>) -> Self {
        TokenBytes { tokens }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The bytes of `id` (None: special or out of the vocabulary).
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize)?.as_deref()
    }
}

use Spelling::{ByteLevel, Metaspace};

/// A SentencePiece piece's bytes.
fn metaspace(s: &str) -> Vec<u8> {
    if let Some(hex) = s.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
        if let Ok(b) = u8::from_str_radix(hex, 16) {
            return vec![b];
        }
    }
    s.replace('\u{2581}', " ").into_bytes()
}
