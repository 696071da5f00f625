//! Rendering the checkpoint's Jinja chat template (`tokenizer_config.json`) with `minijinja`.
//!
//! The template sees what `transformers`' `apply_chat_template` gives it: `messages` (as the
//! request's JSON: `tool_calls`, `tool_call_id`, `name` and `reasoning_content` included),
//! `tools` (the request's tool list, or none), `add_generation_prompt`, `bos_token`,
//! `eos_token`, each of the request's `chat_template_kwargs` as a variable of its own, and a
//! `raise_exception` function. `tojson` writes JSON as Python's `json.dumps` does (`", "` and
//! `": "`, non-ASCII as is, no HTML escaping; `indent` honoured), as transformers' filter does.
//! Template errors become request errors.

use crate::parsers::pyjson;
use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value};

/// Names a `chat_template_kwargs` entry may not take (transformers passes them itself).
pub const RESERVED: &[&str] = &["messages", "tools", "add_generation_prompt", "documents"];

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn tojson(v: JValue, indent: Option<usize>, kwargs: Kwargs) -> Result<JValue, Error> {
    let indent = indent.or(kwargs.get::<Option<usize>>("indent")?);
    let _: Option<JValue> = kwargs.get("ensure_ascii")?;
    let _: Option<JValue> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&v)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(JValue::from_safe_string(pyjson::dumps(&json, indent)))
}

fn environment(template: &str) -> Result<Environment<'_>, String> {
    let mut env = Environment::new();
    env.add_function("raise_exception", raise_exception);
    env.add_filter("tojson", tojson);
    env.add_template("chat", template)
        .map_err(|e| format!("chat template: {e}"))?;
    Ok(env)
}

/// Compiles `template` without rendering it (a start-up check of `--chat-template`).
pub fn check(template: &str) -> Result<(), String> {
    environment(template).map(|_| ())
}

/// What a template renders besides the messages.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    pub tools: Option<&'a Value>,
    pub kwargs: Option<&'a Map<String, Value>>,
}

/// Renders `template` for `messages` (JSON objects).
pub fn render(
    template: &str,
    messages: &[Value],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
    extra: Extra<'_>,
) -> Result<String, String> {
    if let Some(c) = super::conv_template::of_marker(template) {
        return super::conv_template::render(c, messages);
    }
    let env = environment(template)?;
    let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
    let mut ctx: Vec<(String, JValue)> = vec![
        ("bos_token".into(), JValue::from(bos_token.unwrap_or(""))),
        ("eos_token".into(), JValue::from(eos_token.unwrap_or(""))),
    ];
    for (k, v) in extra.kwargs.into_iter().flatten() {
        if RESERVED.contains(&k.as_str()) {
            return Err(format!("chat_template_kwargs may not set `{k}`."));
        }
        ctx.retain(|(n, _)| n != k);
        ctx.push((k.clone(), JValue::from_serialize(v)));
    }
    ctx.push(("messages".into(), JValue::from_serialize(messages)));
    ctx.push((
        "tools".into(),
        extra
            .tools
            .map(JValue::from_serialize)
            .unwrap_or(JValue::from(())),
    ));
    ctx.push((
        "add_generation_prompt".into(),
        JValue::from(add_generation_prompt),
    ));
    tmpl.render(JValue::from_iter(ctx))
        .map_err(|e| format!("chat template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let m = [json!({"role": "user", "content": "hi"})];
        let s = render(CHATML, &m, true, None, None, Extra::default()).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    /// A Qwen-2.5-like tool template: tools as JSON in the system turn, assistant calls with
    /// their (object) arguments, tool results by id, and a kwarg as a variable.
    const TOOLS: &str = concat!(
        "{% if tools %}<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools>\n{% endif %}",
        "{% for m in messages %}[{{ m.role }}]",
        "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}",
        "{% elif m.role == 'tool' %}({{ m.tool_call_id }}) {{ m.content }}",
        "{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
        "{% if add_generation_prompt %}[assistant]{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}",
    );

    #[test]
    fn tools_tool_calls_tool_results_and_kwargs_render() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city, °C",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let msgs = [
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "21 <sunny>"}),
        ];
        let kwargs = json!({"enable_thinking": false, "bos_token": "<s>"});
        let extra = Extra {
            tools: Some(&tools),
            kwargs: kwargs.as_object(),
        };
        let s = render(TOOLS, &msgs, true, Some("B"), None, extra).unwrap();
        assert_eq!(
            s,
            concat!(
                // The client's key order, as SGLang (Python dicts) renders it.
                "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather in a city, °C\", ",
                "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}}}\n</tools>\n",
                "[user]Weather in Paris?\n",
                "[assistant]<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>\n",
                "[tool](call_1) 21 <sunny>\n",
                "[assistant]<think></think>"
            )
        );
        // Without tools and kwargs: `tools` is none, the kwarg undefined.
        let s = render(TOOLS, &msgs[..1], true, None, None, Extra::default()).unwrap();
        assert_eq!(s, "[user]Weather in Paris?\n[assistant]");
        // A kwarg overrides a special token, not the messages.
        let s = render("{{ bos_token }}", &msgs, false, Some("B"), None, extra).unwrap();
        assert_eq!(s, "<s>");
        let bad = json!({"messages": []});
        let e = render(
            TOOLS,
            &msgs,
            true,
            None,
            None,
            Extra {
                tools: None,
                kwargs: bad.as_object(),
            },
        );
        assert!(e.unwrap_err().contains("messages"));
        let s = render(
            "{{ tools | tojson(indent=2) }}",
            &msgs,
            false,
            None,
            None,
            Extra {
                tools: Some(&json!([1])),
                kwargs: None,
            },
        )
        .unwrap();
        assert_eq!(s, "[\n  1\n]");
    }
}
