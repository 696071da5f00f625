//! The made models' tokenizer: a byte-level BPE trained deterministically on an embedded corpus.
//!
//! Greedy merge loop: count adjacent symbol pairs over the corpus words (weighted by frequency),
//! merge the most frequent pair (ties broken by the pair's text, so the result is the same on every
//! platform), repeat until the asked number of merges or no pair occurs twice. O(merges × corpus).

use std::collections::{BTreeMap, HashMap};

const CORPUS: &str = include_str!("corpus.txt");

/// GPT-2's byte → printable character map used by byte-level BPE.
pub fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + extra).unwrap_or('?');
            extra += 1;
            printable.push(b);
        }
    }
    map
}

/// Words of the corpus as byte-level symbol sequences (a leading space stays with its word).
fn corpus_words(chars: &[char]) -> BTreeMap<Vec<String>, usize> {
    let mut words = BTreeMap::new();
    let mut cur = String::new();
    let mut flush = |w: &mut String| {
        if !w.is_empty() {
            let syms: Vec<String> = w.bytes().map(|b| chars[b as usize].to_string()).collect();
            *words.entry(syms).or_insert(0) += 1;
            w.clear();
        }
    };
    for ch in CORPUS.chars() {
        if ch.is_alphanumeric() {
            cur.push(ch);
        } else if ch == ' ' {
            flush(&mut cur);
            cur.push(' ');
        } else {
            flush(&mut cur);
            cur.push(ch);
            flush(&mut cur);
        }
    }
    flush(&mut cur);
    words
}

/// Trains up to `merges` BPE merges; returns (vocab in id order, merges).
pub(super) fn train_bpe(merges: usize) -> (Vec<String>, Vec<(String, String)>) {
    let chars = byte_chars();
    let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut words: Vec<(Vec<String>, usize)> = corpus_words(&chars).into_iter().collect();
    let mut out = Vec::new();
    while out.len() < merges {
        let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
        for (w, n) in &words {
            for p in w.windows(2) {
                *counts.entry((&p[0], &p[1])).or_insert(0) += n;
            }
        }
        let best = counts
            .iter()
            .filter(|(_, &c)| c >= 2)
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(p, _)| (p.0.to_string(), p.1.to_string()));
        let Some((a, b)) = best else { break };
        let joined = format!("{a}{b}");
        for (w, _) in words.iter_mut() {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = joined.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        vocab.push(joined);
        out.push((a, b));
    }
    (vocab, out)
}
