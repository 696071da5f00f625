//! SGLang's parser utilities over a text the client already has: `POST /separate_reasoning` and
//! `POST /parse_function_call`, with the parsers of `/v1/chat/completions` ([`crate::parsers`])
//! named in the request (not the server's flags).

use super::error::{parse_body, ApiError};
use crate::parsers::output::{parse_reply, ReplyParser};
use crate::parsers::reasoning::ReasoningStream;
use crate::parsers::{ReasoningParser, ToolParser};
use axum::body::Bytes;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasoningWire {
    text: String,
    reasoning_parser: String,
    #[serde(default)]
    return_blocks: bool,
    #[serde(default)]
    #[allow(dead_code)]
    rid: Option<Value>,
}

/// The answer of `/separate_reasoning` for `text` (a request without chat template arguments:
/// Qwen3 treats the text as reasoning from its start, as DeepSeek-R1 does).
pub fn separate(kind: ReasoningParser, text: &str, return_blocks: bool) -> Value {
    let forced = ReasoningStream::forced(kind, None);
    let r = parse_reply(ReplyParser::new(Some((kind, forced)), None), text);
    let reasoning = r.reasoning.unwrap_or_default();
    let mut out = json!({"reasoning_text": reasoning, "text": r.content});
    if return_blocks {
        let reasoning_blocks: Vec<&str> = Some(reasoning.as_str())
            .filter(|r| !r.is_empty())
            .into_iter()
            .collect();
        let mut blocks: Vec<Value> = reasoning_blocks
            .iter()
            .map(|t| json!({"type": "reasoning", "text": t}))
            .collect();
        blocks.push(json!({"type": "text", "text": r.content}));
        out["reasoning_blocks"] = json!(reasoning_blocks);
        out["text_blocks"] = json!([r.content]);
        out["blocks"] = json!(blocks);
    }
    out
}

/// `POST /separate_reasoning {"text", "reasoning_parser", "return_blocks"?}`.
pub async fn separate_reasoning(body: Bytes) -> Result<Json<Value>, ApiError> {
    let w: ReasoningWire = parse_body(&body)?;
    let kind = ReasoningParser::from_flag(&w.reasoning_parser).map_err(|_| {
        ApiError::bad_request(format!(
            "Unsupported reasoning_parser '{}' (strata serve has: {}).",
            w.reasoning_parser,
            ReasoningParser::NAMES.join(", ")
        ))
    })?;
    Ok(Json(separate(kind, &w.text, w.return_blocks)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionCallWire {
    text: String,
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(default)]
    tool_call_parser: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    rid: Option<Value>,
}

/// The function names of OpenAI `tools` entries (`{"type": "function", "function": {"name"}}`).
fn tool_names(tools: &[Value]) -> Result<Vec<String>, ApiError> {
    tools
        .iter()
        .map(|t| {
            t["function"]["name"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request("Each tool needs `function.name`."))
        })
        .collect()
}

/// The answer of `/parse_function_call`: calls of unknown functions are left in the text;
/// `tool_index` is the called function's place in `names`.
pub fn function_calls(parser: ToolParser, names: Vec<String>, text: &str) -> Value {
    let r = parse_reply(ReplyParser::new(None, Some((parser, names.clone()))), text);
    let calls: Vec<Value> = r
        .calls
        .iter()
        .map(|c| {
            let index = names
                .iter()
                .position(|n| *n == c.name)
                .map_or(-1, |i| i as i64);
            json!({"tool_index": index, "name": c.name, "parameters": c.arguments})
        })
        .collect();
    json!({"normal_text": r.content, "calls": calls})
}

/// `POST /parse_function_call {"text", "tools", "tool_call_parser"}`.
pub async fn parse_function_call(body: Bytes) -> Result<Json<Value>, ApiError> {
    let w: FunctionCallWire = parse_body(&body)?;
    let name = w.tool_call_parser.unwrap_or_default();
    let parser = ToolParser::from_flag(&name).map_err(|_| {
        ApiError::bad_request(format!(
            "Unsupported tool_call_parser '{name}' (strata serve has: {}).",
            ToolParser::NAMES.join(", ")
        ))
    })?;
    let names = tool_names(&w.tools)?;
    Ok(Json(function_calls(parser, names, &w.text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_is_split_with_and_without_blocks() {
        let v = separate(
            ReasoningParser::DeepSeekR1,
            "a plan</think>the answer",
            false,
        );
        assert_eq!(v, json!({"reasoning_text": "a plan", "text": "the answer"}));
        let v = separate(ReasoningParser::Qwen3, "<think>x</think>y", true);
        assert_eq!(v["reasoning_text"], "x");
        assert_eq!(v["text"], "y");
        assert_eq!(v["reasoning_blocks"], json!(["x"]));
        assert_eq!(v["text_blocks"], json!(["y"]));
        assert_eq!(
            v["blocks"],
            json!([{"type": "reasoning", "text": "x"}, {"type": "text", "text": "y"}])
        );
    }

    #[test]
    fn calls_carry_the_tool_index_and_json_parameters() {
        let names = vec!["a".to_string(), "get_weather".to_string()];
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>";
        let v = function_calls(ToolParser::Qwen25, names.clone(), text);
        assert_eq!(v["normal_text"], "Let me check.");
        assert_eq!(
            v["calls"],
            json!([{"tool_index": 1, "name": "get_weather", "parameters": "{\"city\": \"Paris\"}"}])
        );
        let v = function_calls(ToolParser::Qwen25, names, "no calls here");
        assert_eq!(v, json!({"normal_text": "no calls here", "calls": []}));
    }

    #[test]
    fn tools_need_a_function_name() {
        assert!(tool_names(&[json!({"type": "function"})]).is_err());
        assert_eq!(
            tool_names(&[json!({"type": "function", "function": {"name": "f"}})]).unwrap(),
            vec!["f"]
        );
    }
}
