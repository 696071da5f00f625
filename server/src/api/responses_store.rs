//! The Responses API's stored responses (`store`, true unless a request says false, as in
//! OpenAI's API and SGLang): each response object with the conversation it ends (the chat
//! messages of every input and output so far, without `instructions`, which OpenAI does not carry
//! over), so `previous_response_id` continues it and `GET /v1/responses/{id}` returns it. In
//! memory only (a restart forgets them, as SGLang's in-process store does); the oldest go first
//! past [`MAX_RESPONSES`] responses or [`MAX_BYTES`] of JSON.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Most responses kept.
pub const MAX_RESPONSES: usize = 4096;
/// Most bytes of JSON kept (responses and their conversations).
pub const MAX_BYTES: usize = 64 << 20;

/// One stored response.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The response object as it was returned.
    pub response: Value,
    /// The chat messages of the conversation, this response's output included.
    pub history: Vec<Value>,
}

impl Stored {
    fn bytes(&self) -> usize {
        self.response.to_string().len()
            + self
                .history
                .iter()
                .map(|m| m.to_string().len())
                .sum::<usize>()
    }
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, (Stored, usize)>,
    /// The ids of `map`, oldest first.
    order: VecDeque<String>,
    bytes: usize,
}

/// The server's stored responses.
#[derive(Default)]
pub struct ResponseStore {
    inner: Mutex<Inner>,
}

impl ResponseStore {
    /// Keeps `s` under `id` (replacing one of the same id), evicting the oldest past the bounds.
    pub fn put(&self, id: String, s: Stored) {
        self.put_bounded(id, s, MAX_RESPONSES, MAX_BYTES);
    }

    fn put_bounded(&self, id: String, s: Stored, max_n: usize, max_bytes: usize) {
        let size = s.bytes();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = g.map.insert(id.clone(), (s, size)) {
            g.bytes -= old;
            g.order.retain(|i| *i != id);
        }
        g.bytes += size;
        g.order.push_back(id);
        while g.map.len() > max_n || (g.bytes > max_bytes && g.map.len() > 1) {
            let Some(oldest) = g.order.pop_front() else {
                break;
            };
            if let Some((_, n)) = g.map.remove(&oldest) {
                g.bytes -= n;
            }
        }
    }

    /// The response stored under `id`.
    pub fn get(&self, id: &str) -> Option<Stored> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.map.get(id).map(|(s, _)| s.clone())
    }

    /// Forgets `id`; false when it was not stored.
    pub fn remove(&self, id: &str) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.map.remove(id) {
            Some((_, n)) => {
                g.bytes -= n;
                g.order.retain(|i| i != id);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str) -> Stored {
        Stored {
            response: json!({"id": text}),
            history: vec![json!({"role": "user", "content": text})],
        }
    }

    #[test]
    fn keeps_the_newest_within_the_count_and_byte_bounds() {
        let s = ResponseStore::default();
        for i in 0..5 {
            s.put_bounded(format!("r{i}"), stored(&format!("t{i}")), 3, usize::MAX);
        }
        assert!(s.get("r0").is_none() && s.get("r1").is_none());
        for i in 2..5 {
            assert_eq!(
                s.get(&format!("r{i}")).unwrap().response["id"],
                format!("t{i}")
            );
        }
        // Replacing an id keeps one copy; removing frees it.
        s.put_bounded("r2".into(), stored("again"), 3, usize::MAX);
        assert_eq!(s.get("r2").unwrap().response["id"], "again");
        assert!(s.remove("r2") && !s.remove("r2") && s.get("r2").is_none());
        assert!(s.get("r3").is_some() && s.get("r4").is_some());
        // Stored again after its removal, it is the newest (not evicted in its old place).
        s.put_bounded("r2".into(), stored("back"), 3, usize::MAX);
        s.put_bounded("r5".into(), stored("t5"), 3, usize::MAX);
        assert!(s.get("r3").is_none() && s.get("r2").is_some() && s.get("r5").is_some());
        // A byte bound evicts the oldest too, but keeps the newest even when it alone is over.
        let b = ResponseStore::default();
        let one = stored("x").bytes();
        for i in 0..4 {
            b.put_bounded(format!("b{i}"), stored("x"), 100, 2 * one);
        }
        assert!(b.get("b1").is_none() && b.get("b2").is_some() && b.get("b3").is_some());
        let big = ResponseStore::default();
        big.put_bounded("only".into(), stored("x"), 100, 1);
        assert!(big.get("only").is_some());
    }
}
