//! SGLang's `reasoning_effort` and `reasoning` fields of a chat request: they switch a reasoning
//! model's thinking on or off through the chat template. An effort of `"none"` turns it off, any
//! other level (`minimal`, `low`, `medium`, `high`, `xhigh`, `max`, or a number in [0, 0.99])
//! on, and `reasoning: {"enabled": true}` on; the answer goes into `chat_template_kwargs` as
//! both `thinking` (DeepSeek-V3, Kimi-K2 templates) and `enable_thinking` (Qwen3, GLM-4.5)
//! unless the request sets those itself. A bool, an unknown level or a number out of range is a
//! 400, as SGLang's validation.

use serde_json::{Map, Value};

const LEVELS: [&str; 7] = ["none", "minimal", "low", "medium", "high", "xhigh", "max"];

/// Whether the request's effort fields turn thinking on (Some(true)), off, or say nothing.
pub fn thinking(effort: Option<&Value>, reasoning: Option<&Value>) -> Result<Option<bool>, String> {
    let mut effort = effort.filter(|v| !v.is_null()).cloned();
    let mut on = None;
    if let Some(Value::Object(r)) = reasoning {
        let e = r.get("effort").or_else(|| r.get("reasoning_effort"));
        if let Some(e) = e.filter(|v| !v.is_null()) {
            effort = Some(e.clone());
        }
        let enabled = r.get("enabled").or_else(|| r.get("enable"));
        let enabled = match enabled {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => {
                matches!(
                    s.trim().to_lowercase().as_str(),
                    "1" | "true" | "yes" | "y" | "on"
                )
            }
            _ => false,
        };
        if enabled {
            on = Some(true);
        }
    }
    match effort {
        None => Ok(on),
        Some(Value::String(s)) if LEVELS.contains(&s.as_str()) => Ok(Some(s != "none")),
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(x) if (0.0..=0.99).contains(&x) => Ok(Some(true)),
            _ => Err(format!(
                "invalid reasoning effort: {s:?} (one of {LEVELS:?} or a number in [0, 0.99])"
            )),
        },
        Some(Value::Number(n)) if n.as_f64().is_some_and(|x| (0.0..=0.99).contains(&x)) => {
            Ok(Some(true))
        }
        Some(Value::Bool(_)) => Err("reasoning_effort must not be a boolean".into()),
        Some(other) => Err(format!(
            "invalid reasoning effort: {other} (one of {LEVELS:?} or a number in [0, 0.99])"
        )),
    }
}

/// `kwargs` with `thinking` and `enable_thinking` set to `on` where they are not set already.
pub fn apply(kwargs: Option<Map<String, Value>>, on: Option<bool>) -> Option<Map<String, Value>> {
    let Some(on) = on else { return kwargs };
    let mut m = kwargs.unwrap_or_default();
    for k in ["thinking", "enable_thinking"] {
        m.entry(k).or_insert(Value::Bool(on));
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn levels_switch_thinking_and_bad_values_are_refused() {
        assert_eq!(thinking(None, None), Ok(None));
        assert_eq!(thinking(Some(&json!("none")), None), Ok(Some(false)));
        assert_eq!(thinking(Some(&json!("high")), None), Ok(Some(true)));
        assert_eq!(thinking(Some(&json!(0.5)), None), Ok(Some(true)));
        assert_eq!(thinking(Some(&json!("0.3")), None), Ok(Some(true)));
        assert_eq!(
            thinking(None, Some(&json!({"effort": "none", "enabled": true}))),
            Ok(Some(false))
        );
        assert_eq!(
            thinking(None, Some(&json!({"enabled": "yes"}))),
            Ok(Some(true))
        );
        for bad in [json!(true), json!("extreme"), json!(1.5), json!([1])] {
            assert!(thinking(Some(&bad), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_request_s_own_kwargs_win() {
        let own = json!({"enable_thinking": true}).as_object().cloned();
        let m = apply(own, Some(false)).unwrap();
        assert_eq!(m["enable_thinking"], true);
        assert_eq!(m["thinking"], false);
        assert_eq!(apply(None, None), None);
    }
}
