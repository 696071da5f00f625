//! The function-calling and reasoning fields of a `/v1/chat/completions` request, as SGLang reads
//! them: `messages` as the template sees them (tool results, assistant `tool_calls` with their
//! JSON-string `arguments` turned into objects), `tools` and `tool_choice` (which tools the
//! template gets, whether the reply is searched for calls), `chat_template_kwargs` and
//! `separate_reasoning` (whether the reasoning is split off).

use super::error::ApiError;
use crate::parsers::output::ReplyParser;
use crate::parsers::reasoning::ReasoningStream;
use crate::parsers::{ReasoningParser, ToolParser};
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    role: String,
    content: Option<Content>,
    tool_calls: Option<Vec<Value>>,
    tool_call_id: Option<String>,
    name: Option<String>,
    reasoning_content: Option<String>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg.into())
}

/// One message as the template sees it. Text parts are joined (with a space for tool results,
/// as SGLang flattens them); no content is the empty string.
pub fn message_json(m: Message) -> Result<Value, ApiError> {
    let sep = if m.role == "tool" { " " } else { "" };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(ps)) => {
            let mut texts = Vec::new();
            for p in ps {
                if p.kind != "text" {
                    return Err(bad(format!(
                        "Content part type `{}` is not supported.",
                        p.kind
                    )));
                }
                texts.push(p.text.unwrap_or_default());
            }
            texts.join(sep)
        }
    };
    let mut out = json!({"role": m.role, "content": content});
    if let Some(calls) = m.tool_calls {
        let mut list = Vec::new();
        for mut c in calls {
            let Some(obj) = c.as_object_mut() else {
                return Err(bad("A tool call must be an object."));
            };
            obj.entry("type").or_insert(json!("function"));
            let f = obj.get_mut("function").and_then(Value::as_object_mut);
            let Some(f) = f.filter(|f| f.get("name").is_some_and(Value::is_string)) else {
                return Err(bad("A tool call needs a `function` with a `name`."));
            };
            if m.role == "assistant" {
                if let Some(Value::String(a)) = f.get("arguments") {
                    let v: Value = serde_json::from_str(a).map_err(|_| {
                        bad("Assistant tool call function.arguments must be valid JSON.")
                    })?;
                    if !v.is_object() {
                        return Err(bad(
                            "Assistant tool call function.arguments must be a JSON object.",
                        ));
                    }
                    f.insert("arguments".into(), v);
                }
            }
            list.push(c);
        }
        out["tool_calls"] = Value::Array(list);
    }
    for (k, v) in [
        ("tool_call_id", m.tool_call_id),
        ("name", m.name),
        ("reasoning_content", m.reasoning_content),
    ] {
        if let Some(v) = v {
            out[k] = json!(v);
        }
    }
    Ok(out)
}

/// `tool_choice`, SGLang's default: `auto` with tools, `none` without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// What the request's tool fields decide.
#[derive(Debug)]
pub struct ToolPlan {
    /// The `tools` the template renders (none when `tool_choice` is `none`; only the named one
    /// when one is named).
    pub template_tools: Option<Value>,
    /// The functions a call may name, when the reply is searched for calls.
    pub known: Option<Vec<String>>,
    /// `tool_choice` `required` or a named function: the JSON schema the reply is constrained to
    /// (an array of `{"name", "parameters"}` calls, SGLang's), parsed back as calls.
    pub forced: Option<Value>,
}

/// One call of `tool` as SGLang's forced-call schema writes it.
fn call_schema(tool: &Value) -> Value {
    let params = tool["function"]
        .get("parameters")
        .filter(|p| !p.is_null())
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    json!({"properties": {"name": {"type": "string", "enum": [tool_name(tool)]},
        "parameters": params}, "required": ["name", "parameters"]})
}

/// The schema of a forced reply: one or more calls of the named tool, or of any tool for
/// `required`; one call at most when `parallel_tool_calls` is false.
fn forced_schema(tools: &[Value], choice: &ToolChoice, parallel: bool) -> Option<Value> {
    let items = match choice {
        ToolChoice::Required => {
            json!({"type": "object", "anyOf": tools.iter().map(call_schema).collect::<Vec<_>>()})
        }
        ToolChoice::Named(n) => call_schema(tools.iter().find(|t| tool_name(t) == Some(n))?),
        _ => return None,
    };
    let mut schema = json!({"type": "array", "minItems": 1, "items": items});
    if !parallel {
        schema["maxItems"] = json!(1);
    }
    Some(schema)
}

fn tool_name(t: &Value) -> Option<&str> {
    t.get("function")?.get("name")?.as_str()
}

/// Checks `tools` and `tool_choice` (400s with SGLang's messages) and plans them.
pub fn plan_tools(
    tools: Option<Vec<Value>>,
    choice: Option<&Value>,
    parallel: bool,
) -> Result<ToolPlan, ApiError> {
    let mut tools = tools.unwrap_or_default();
    for t in &mut tools {
        if tool_name(t).is_none() {
            return Err(bad(
                "Each tool must be an object with a `function` that has a `name`.",
            ));
        }
        t.as_object_mut()
            .expect("checked")
            .entry("type")
            .or_insert(json!("function"));
    }
    let choice = match choice {
        None | Some(Value::Null) if tools.is_empty() => ToolChoice::None,
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("required") => ToolChoice::Required,
        Some(v) => match v.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(n) => ToolChoice::Named(n.to_string()),
            None => {
                return Err(bad(
                    "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                ))
            }
        },
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => {
            return Err(bad(
                "Tools cannot be empty if tool choice is set to required.",
            ))
        }
        ToolChoice::Named(_) if tools.is_empty() => {
            return Err(bad(
                "Tools cannot be empty if tool choice is set to a specific tool.",
            ))
        }
        ToolChoice::Named(n) if !tools.iter().any(|t| tool_name(t) == Some(n)) => {
            return Err(bad(format!("Tool '{n}' not found in tools list.")))
        }
        _ => {}
    }
    if tools.is_empty() || choice == ToolChoice::None {
        return Ok(ToolPlan {
            template_tools: None,
            known: None,
            forced: None,
        });
    }
    let known = tools
        .iter()
        .filter_map(tool_name)
        .map(str::to_string)
        .collect();
    let forced = forced_schema(&tools, &choice, parallel);
    if let ToolChoice::Named(n) = &choice {
        tools.retain(|t| tool_name(t) == Some(n));
    }
    Ok(ToolPlan {
        template_tools: Some(Value::Array(tools)),
        known: Some(known),
        forced,
    })
}

/// The token ids a constrained chat reply's grammar starts after, when the reply reasons first
/// (SGLang's reasoner grammar backend: `--reasoning-parser` set and the request's reasoning on,
/// Qwen3's from `chat_template_kwargs.enable_thinking`); None: the grammar starts at once.
pub fn think_end(
    reasoning: Option<ReasoningParser>,
    kwargs: Option<&Map<String, Value>>,
    encode: impl Fn(&str) -> Result<Vec<u32>, String>,
) -> Result<Option<std::sync::Arc<[u32]>>, ApiError> {
    match reasoning {
        Some(k) if ReasoningStream::forced(k, kwargs) => end_marker(k, encode),
        _ => Ok(None),
    }
}

/// The token ids of `k`'s reasoning end marker (`</think>`); None where it encodes to nothing.
pub fn end_marker(
    k: ReasoningParser,
    encode: impl Fn(&str) -> Result<Vec<u32>, String>,
) -> Result<Option<std::sync::Arc<[u32]>>, ApiError> {
    let ids = encode(k.markers().1).map_err(ApiError::bad_request)?;
    Ok((!ids.is_empty()).then(|| ids.into()))
}

/// The parsers of this request's reply: the server's tool-call parser when the plan searches for
/// calls, its reasoning parser unless `separate_reasoning` is false (Qwen3's start state from
/// `chat_template_kwargs.enable_thinking`).
pub fn reply_parser(
    tool: Option<ToolParser>,
    reasoning: Option<ReasoningParser>,
    plan: &ToolPlan,
    separate_reasoning: bool,
    kwargs: Option<&Map<String, Value>>,
) -> ReplyParser {
    let reasoning = reasoning
        .filter(|_| separate_reasoning)
        .map(|k| (k, ReasoningStream::forced(k, kwargs)));
    // A forced reply is a JSON array of calls, whatever --tool-call-parser says.
    let tool = if plan.forced.is_some() {
        Some(ToolParser::JsonArray)
    } else {
        tool
    };
    let tools = tool.zip(plan.known.clone());
    ReplyParser::new(reasoning, tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: Value) -> Result<Value, ApiError> {
        message_json(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn constrained_replies_that_reason_first_start_their_grammar_after_the_end_marker() {
        let enc = |t: &str| Ok(t.bytes().map(u32::from).collect());
        let end: Vec<u32> = "</think>".bytes().map(u32::from).collect();
        let off = json!({"enable_thinking": false});
        let on = json!({"enable_thinking": true});
        let q3 = Some(ReasoningParser::Qwen3);
        assert_eq!(think_end(q3, None, enc).unwrap().as_deref(), Some(&end[..]));
        assert_eq!(
            think_end(q3, on.as_object(), enc).unwrap().as_deref(),
            Some(&end[..])
        );
        assert!(think_end(q3, off.as_object(), enc).unwrap().is_none());
        let r1 = Some(ReasoningParser::DeepSeekR1);
        assert!(think_end(r1, off.as_object(), enc).unwrap().is_some());
        assert!(think_end(None, None, enc).unwrap().is_none());
    }

    #[test]
    fn messages_carry_tool_fields_and_parsed_arguments() {
        let m = msg(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
            "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}),
        )
        .unwrap();
        assert_eq!(
            m,
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": {"a": 1}}}]})
        );
        let m = msg(json!({"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})).unwrap();
        assert_eq!(
            m,
            json!({"role": "tool", "content": "a b", "tool_call_id": "call_1"})
        );
        for args in ["{oops", "[1]"] {
            let e = msg(
                json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": args}}]}),
            );
            assert!(e.is_err(), "{args}");
        }
    }

    #[test]
    fn tool_choice_decides_template_tools_and_parsing() {
        let tools = || {
            Some(vec![
                json!({"function": {"name": "a"}}),
                json!({"type": "function", "function": {"name": "b",
                    "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}),
            ])
        };
        let p = plan_tools(tools(), None, true).unwrap();
        assert_eq!(p.known, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(
            p.template_tools.unwrap()[0],
            json!({"type": "function", "function": {"name": "a"}})
        );
        assert_eq!(p.forced, None);
        let p = plan_tools(tools(), Some(&json!("none")), true).unwrap();
        assert!(p.template_tools.is_none() && p.known.is_none() && p.forced.is_none());
        let named = json!({"type": "function", "function": {"name": "b"}});
        let p = plan_tools(tools(), Some(&named), false).unwrap();
        assert_eq!(p.template_tools.unwrap().as_array().unwrap().len(), 1);
        assert_eq!(p.known.unwrap().len(), 2);
        // A named tool: one call of it (parallel calls off); its parameters' schema.
        assert_eq!(
            p.forced.unwrap(),
            json!({"type": "array", "minItems": 1, "maxItems": 1, "items": {"properties": {
                "name": {"type": "string", "enum": ["b"]}, "parameters": {"type": "object",
                "properties": {"x": {"type": "integer"}}}}, "required": ["name", "parameters"]}})
        );
        let p = plan_tools(tools(), Some(&json!("required")), true).unwrap();
        assert!(p.known.is_some());
        let f = p.forced.unwrap();
        assert_eq!(f.get("maxItems"), None);
        let any = f["items"]["anyOf"].as_array().unwrap();
        assert_eq!(
            any[0]["properties"]["parameters"],
            json!({"type": "object", "properties": {}})
        );
        assert_eq!(any.len(), 2);
        assert!(plan_tools(None, Some(&json!("required")), true).is_err());
        let unknown = json!({"type": "function", "function": {"name": "c"}});
        assert!(plan_tools(tools(), Some(&unknown), true).is_err());
        assert!(plan_tools(tools(), Some(&json!("sometimes")), true).is_err());
        assert!(plan_tools(Some(vec![json!({"type": "function"})]), None, true).is_err());
        let p = plan_tools(None, None, true).unwrap();
        assert!(p.template_tools.is_none() && p.known.is_none());
    }
}
