//! `--preferred-sampling-params` (SGLang's flag): a JSON object of sampling parameters that a
//! `/generate` request's `sampling_params` take for the fields they do not set. SGLang merges it
//! under every request's parameters where it tokenizes them; its OpenAI routes have set every
//! field they know by then, so the native route is the one it reaches (here the only one).
//! `/get_model_info` reports the flag's text as given. A value that is not an object of valid
//! sampling parameters stops the start (SGLang fails on it later, per request or at start-up).

use crate::sampling::SamplingParamsWire;
use serde_json::{Map, Value};

/// The parsed flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Preferred {
    /// As given on the command line.
    pub text: String,
    pub fields: Map<String, Value>,
}

/// Parses and checks the flag's value (None: not given).
pub fn parse(text: Option<&str>) -> Result<Option<Preferred>, String> {
    let Some(text) = text else {
        return Ok(None);
    };
    let bad = |m: String| format!("--preferred-sampling-params {text}: {m}");
    let fields = match serde_json::from_str::<Value>(text).map_err(|e| bad(e.to_string()))? {
        Value::Object(m) => m,
        other => return Err(bad(format!("expected a JSON object, got {other}"))),
    };
    let wire: SamplingParamsWire =
        serde_json::from_value(Value::Object(fields.clone())).map_err(|e| bad(e.to_string()))?;
    wire.validate().map_err(bad)?;
    Ok(Some(Preferred {
        text: text.to_string(),
        fields,
    }))
}

impl Preferred {
    /// One request's `sampling_params` (an object, or `null` for none) with the preferred fields
    /// it does not set; anything else is returned as it is (and refused by the caller's parse).
    pub fn fill(&self, params: Value) -> Value {
        match params {
            Value::Null => Value::Object(self.fields.clone()),
            Value::Object(mut m) => {
                fill_missing(&mut m, &self.fields);
                Value::Object(m)
            }
            other => other,
        }
    }
}

/// Adds to `own` the keys of `defaults` it does not have (a request's fields over a server's).
pub fn fill_missing(own: &mut Map<String, Value>, defaults: &Map<String, Value>) {
    for (k, v) in defaults {
        own.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_fields_win_and_missing_ones_are_filled() {
        let p = parse(Some(r#"{"temperature": 0, "max_new_tokens": 5}"#))
            .unwrap()
            .unwrap();
        assert_eq!(
            p.fill(json!({"max_new_tokens": 3})),
            json!({"temperature": 0, "max_new_tokens": 3})
        );
        assert_eq!(
            p.fill(Value::Null),
            json!({"temperature": 0, "max_new_tokens": 5})
        );
        assert_eq!(p.fill(json!(7)), json!(7));
    }

    #[test]
    fn bad_values_are_start_up_errors_naming_the_flag() {
        assert_eq!(parse(None), Ok(None));
        for bad in ["[1]", "{", r#"{"temperature": -1}"#, r#"{"top_p": "x"}"#] {
            let e = parse(Some(bad)).unwrap_err();
            assert!(e.starts_with("--preferred-sampling-params"), "{bad}: {e}");
        }
    }
}
