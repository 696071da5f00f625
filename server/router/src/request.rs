//! Reading just enough of a request body to route it, and rewriting it for PD mode.
//!
//! The body is never re-serialised in regular mode: it goes to the worker byte for byte. Only the
//! routing fields are looked at (other fields are skipped without allocation). PD mode appends its
//! bootstrap fields before the closing brace, so they win over client-sent ones with the same name
//! (JSON parsers keep the last duplicate).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Result, RouterError};

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_ids: Option<&'a RawValue>,
    /// Embeddings, classification and Responses requests (a string or a list of strings keys).
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    /// Scoring and rerank requests.
    #[serde(borrow, default)]
    query: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    return_logprob: Option<bool>,
}

/// What routing needs from a generate / completions / chat request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Probe {
    /// Text used as the cache-affinity key (the first prompt of a batch; chat messages as JSON).
    pub text: Option<String>,
    /// Token ids used as the key, when given (the first sequence of a batch).
    pub ids: Option<Vec<u32>>,
    pub stream: bool,
    /// Number of prompts when the request is a batch.
    pub batch: Option<usize>,
    pub return_logprob: bool,
}

fn bad(e: impl std::fmt::Display) -> RouterError {
    RouterError::BadRequest(format!("invalid JSON body: {e}"))
}

/// Parses the routing fields; `with_key` false skips the affinity key.
pub fn probe(body: &[u8], with_key: bool) -> Result<Probe> {
    let raw: Raw<'_> = serde_json::from_slice(body).map_err(bad)?;
    let mut p = Probe {
        stream: raw.stream.unwrap_or(false),
        return_logprob: raw.return_logprob.unwrap_or(false),
        ..Default::default()
    };
    if let Some(t) = raw.text.or(raw.prompt).or(raw.input).or(raw.query) {
        let s = t.get().trim_start();
        if s.starts_with('[') {
            // A batch of strings, or (completions) a list of token ids.
            if let Ok(v) = serde_json::from_str::<Vec<String>>(s) {
                p.batch = Some(v.len());
                p.text = v.into_iter().next().filter(|_| with_key);
            } else if let Ok(v) = serde_json::from_str::<Vec<u32>>(s) {
                p.ids = Some(v).filter(|_| with_key);
            }
        } else if with_key {
            p.text = serde_json::from_str::<String>(s).ok();
        }
    } else if let (Some(m), true) = (raw.messages, with_key) {
        p.text = Some(m.get().to_string());
    }
    if let Some(ids) = raw.input_ids {
        let s = ids.get().trim_start();
        if s[1..].trim_start().starts_with('[') {
            let v: Vec<Vec<u32>> = serde_json::from_str(s).map_err(bad)?;
            p.batch = Some(v.len());
            p.ids = v.into_iter().next().filter(|_| with_key);
        } else if with_key {
            p.ids = Some(serde_json::from_str(s).map_err(bad)?);
        }
    }
    Ok(p)
}

/// The PD bootstrap fields for one request (arrays when `batch` is given).
pub fn bootstrap_fields(host: &str, port: Option<u16>, batch: Option<usize>) -> String {
    let host = serde_json::to_string(host).unwrap_or_else(|_| "\"\"".into());
    let port = port.map_or("null".to_string(), |p| p.to_string());
    let room = || rand::random::<u64>() >> 1;
    match batch {
        None => format!(
            r#""bootstrap_host":{host},"bootstrap_port":{port},"bootstrap_room":{}"#,
            room()
        ),
        Some(n) => {
            let rep = |v: &str| vec![v; n].join(",");
            let rooms: Vec<String> = (0..n).map(|_| room().to_string()).collect();
            format!(
                r#""bootstrap_host":[{}],"bootstrap_port":[{}],"bootstrap_room":[{}]"#,
                rep(&host),
                rep(&port),
                rooms.join(",")
            )
        }
    }
}

/// Appends `fields` (`"k":v,...`) to the JSON object in `body`.
pub fn inject(body: &[u8], fields: &str) -> Result<Vec<u8>> {
    let open = body.iter().position(|b| !b.is_ascii_whitespace());
    let close = body.iter().rposition(|b| !b.is_ascii_whitespace());
    let (Some(open), Some(close)) = (open, close) else {
        return Err(RouterError::BadRequest("empty body".into()));
    };
    if body[open] != b'{' || body[close] != b'}' || close <= open {
        return Err(RouterError::BadRequest("body must be a JSON object".into()));
    }
    let empty = body[open + 1..close]
        .iter()
        .all(|b| b.is_ascii_whitespace());
    let mut out = Vec::with_capacity(body.len() + fields.len() + 1);
    out.extend_from_slice(&body[..close]);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(fields.as_bytes());
    out.extend_from_slice(&body[close..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn probes_each_request_shape() {
        let p = probe(
            br#"{"text":"hi \"there\"","stream":true,"x":{"y":[1]}}"#,
            true,
        )
        .unwrap();
        assert_eq!(p.text.as_deref(), Some("hi \"there\""));
        assert!(p.stream && p.batch.is_none());
        let p = probe(br#"{"text":["a","b","c"]}"#, true).unwrap();
        assert_eq!((p.text.as_deref(), p.batch), (Some("a"), Some(3)));
        let p = probe(br#"{"input_ids":[[1,2],[3]],"return_logprob":true}"#, true).unwrap();
        assert_eq!(
            (p.ids, p.batch, p.return_logprob),
            (Some(vec![1, 2]), Some(2), true)
        );
        let p = probe(br#"{"input_ids":[5,6]}"#, true).unwrap();
        assert_eq!((p.ids, p.batch), (Some(vec![5, 6]), None));
        let p = probe(br#"{"messages":[{"role":"user","content":"q"}]}"#, true).unwrap();
        assert_eq!(
            p.text.as_deref(),
            Some(r#"[{"role":"user","content":"q"}]"#)
        );
        let p = probe(br#"{"prompt":"abc"}"#, false).unwrap();
        assert_eq!(p.text, None);
        assert!(probe(b"{nope", true).is_err());
    }

    #[test]
    fn injects_fields_last() {
        let f = bootstrap_fields("10.0.0.1", Some(8998), None);
        let out = inject(br#" {"text":"a","bootstrap_room":1} "#, &f).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["bootstrap_host"], "10.0.0.1");
        assert_eq!(v["bootstrap_port"], 8998);
        let room = v["bootstrap_room"].as_u64().unwrap();
        assert!(room < 1 << 63 && room != 1, "ours wins over the client's");
        let out = inject(b"{}", &bootstrap_fields("h", None, Some(2))).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["bootstrap_host"], serde_json::json!(["h", "h"]));
        assert_eq!(v["bootstrap_port"], serde_json::json!([null, null]));
        assert_eq!(v["bootstrap_room"].as_array().unwrap().len(), 2);
        assert!(inject(b"[1]", &f).is_err());
    }
}
