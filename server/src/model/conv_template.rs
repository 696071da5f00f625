//! SGLang's built-in conversation templates (`--chat-template chatml`, `llama-2`, ...): the
//! FastChat-style templates SGLang registers by name (facts from `sglang==0.5.x`
//! `parser/conversation.py`: names, role tags, separators, default system messages, stop
//! strings), rendered here as SGLang renders them: the last system message replaces the default
//! one, user and assistant turns alternate role tags, an empty assistant turn opens the answer,
//! and each separator style joins them its own way. Another role (a tool result) is a 400, as in
//! SGLang. The template's stop strings join each request's (`stops`), and the prompt is
//! tokenised with the tokenizer's special tokens (BOS), as SGLang sends it as text.
//!
//! A conversation template travels as the chat template text [`marker`] (a Jinja comment, so it
//! compiles and any Jinja consumer sees an empty template); [`render`] is called instead of
//! Jinja for it. `devstral`, whose system message SGLang downloads from the Hub, is not offered.

/// How a template joins its turns (SGLang's `SeparatorStyle`, the ones its templates use).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    AddColonSingle,
    AddColonTwo,
    AddNewLineSingle,
    NoColonSingle,
    Llama2,
    Llama3,
    Llama4,
    ChatMl,
    DeepSeekVl2,
    Gemma3,
    Mpt,
    Qwen2VlEmbed,
}

/// One named template.
#[derive(Debug)]
pub struct Conv {
    pub name: &'static str,
    /// With `{system_message}` where the system message goes.
    system_template: &'static str,
    system_message: &'static str,
    roles: [&'static str; 2],
    style: Style,
    sep: &'static str,
    sep2: &'static str,
    pub stops: &'static [&'static str],
}

const IM_ROLES: [&str; 2] = ["<|im_start|>user", "<|im_start|>assistant"];
const VISION_ASSISTANT: &str = "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";

const fn conv(
    name: &'static str,
    system_template: &'static str,
    system_message: &'static str,
    roles: [&'static str; 2],
    style: Style,
    seps: [&'static str; 2],
    stops: &'static [&'static str],
) -> Conv {
    Conv {
        name,
        system_template,
        system_message,
        roles,
        style,
        sep: seps[0],
        sep2: seps[1],
        stops,
    }
}

/// SGLang's registered text-capable templates, by name.
static TEMPLATES: &[Conv] = &[
    conv("llama-2", "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n", "", ["[INST]", "[/INST]"], Style::Llama2, [" ", " </s><s>"], &["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]),
    conv("mistral", "[SYSTEM_PROMPT]\n{system_message}\n[/SYSTEM_PROMPT]\n\n", "", ["[INST]", "[/INST]"], Style::Llama2, [" ", " </s><s>"], &["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]),
    conv("llama-4", "<|header_start|>system<|header_end|>\n\n{system_message}<|eot|>", "", ["user", "assistant"], Style::Llama4, ["", ""], &["<|end_of_text|>", "<|eot|>", "<|eom|>"]),
    conv("phi-4-mm", "{system_message}", "", ["<|user|>", "<|assistant|>"], Style::NoColonSingle, ["<|end|>", ""], &["<|end|>"]),
    conv("chatml", "<|im_start|>system\n{system_message}", "You are a helpful assistant.", IM_ROLES, Style::ChatMl, ["<|im_end|>", ""], &["<|endoftext|>", "<|im_end|>"]),
    conv("chatml-llava", "<|im_start|>system\n{system_message}", "You are a helpful assistant.", IM_ROLES, Style::ChatMl, ["<|im_end|>", ""], &["<|endoftext|>", "<|im_end|>"]),
    conv("vicuna_v1.1", "{system_message}", "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.", ["USER", "ASSISTANT"], Style::AddColonTwo, [" ", "</s>"], &[]),
    conv("llama_3_vision", "<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>", VISION_ASSISTANT, ["user", "assistant"], Style::Llama3, ["", ""], &["<|end_of_text|>", "<|eot_id|>"]),
    conv("llava_llama_3", "<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>", VISION_ASSISTANT, ["user", "assistant"], Style::Llama3, ["", ""], &["<|end_of_text|>", "<|eot_id|>"]),
    conv("internlm2-chat", "<|im_start|>system\n{system_message}", "", IM_ROLES, Style::AddColonSingle, ["\n", ""], &["<|im_end|>", "<|action_end|>"]),
    conv("internvl-2-5", "<|im_start|>system\n{system_message}", "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。", ["<|im_start|>user\n", "<|im_start|>assistant\n"], Style::Mpt, ["<|im_end|>\n", ""], &["<|im_end|>", "<|action_end|>"]),
    conv("qwen2-vl", "<|im_start|>system\n{system_message}", "You are a helpful assistant.", IM_ROLES, Style::AddNewLineSingle, ["<|im_end|>\n", ""], &["<|im_end|>"]),
    conv("deepseek-ocr", "", "", ["", ""], Style::AddNewLineSingle, ["", ""], &[""]),
    conv("deepseek-vl2", "{system_message}", "", ["<|User|>", "<|Assistant|>"], Style::DeepSeekVl2, ["\n\n", "<｜end▁of▁sentence｜>"], &["User:", "<｜end▁of▁sentence｜>"]),
    conv("gemma-it", "<start_of_turn>user\n{system_message}\n\n", "You are a helpful assistant.", ["<start_of_turn>user\n", "<start_of_turn>model\n"], Style::Gemma3, ["<end_of_turn>\n", ""], &["<end_of_turn>"]),
    conv("gme-qwen2-vl", "<|im_start|>system\n{system_message}", "You are a helpful assistant.", IM_ROLES, Style::Qwen2VlEmbed, ["<|im_end|>\n", ""], &["<|endoftext|>"]),
    conv("minicpmv", "<|im_start|>system\n{system_message}.", "You are a helpful assistant", IM_ROLES, Style::AddNewLineSingle, ["<|im_end|>\n", ""], &["<|im_end|>", "<|endoftext|>"]),
    conv("janus-pro", "{system_message}.", "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language", ["User", "Assistant"], Style::AddColonTwo, ["\n\n", "<｜end▁of▁sentence｜>"], &["<|User|>", "<｜end▁of▁sentence｜>"]),
    conv("minicpmo", "<|im_start|>system\n{system_message}", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", IM_ROLES, Style::AddNewLineSingle, ["<|im_end|>\n", ""], &["<|im_end|>", "<|endoftext|>"]),
    conv("kimi-vl", "<|im_system|>system<|im_middle|>{system_message}", "You are a helpful assistant", ["<|im_user|>user<|im_middle|>", "<|im_assistant|>assistant<|im_middle|>"], Style::NoColonSingle, ["<|im_end|>", ""], &["<|im_end|>"]),
    conv("qwen2-audio", "<|im_start|>system\n{system_message}", "You are a helpful assistant.", IM_ROLES, Style::AddNewLineSingle, ["<|im_end|>\n", ""], &["<|im_end|>"]),
    conv("points-v15-chat", "", "", IM_ROLES, Style::AddNewLineSingle, ["<|im_end|>\n", ""], &["<|im_end|>"]),
];

const MARKER: &str = "{# strata conversation template: ";

/// The built-in template `name`.
pub fn builtin(name: &str) -> Option<&'static Conv> {
    TEMPLATES.iter().find(|c| c.name == name)
}

/// The names, for error messages.
pub fn names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|c| c.name).collect()
}

/// The chat template text that stands for `c`.
pub fn marker(c: &Conv) -> String {
    format!("{MARKER}{} #}}", c.name)
}

/// The conversation template a chat template text stands for, if it is a [`marker`].
pub fn of_marker(template: &str) -> Option<&'static Conv> {
    builtin(template.strip_prefix(MARKER)?.strip_suffix(" #}")?)
}

/// The prompt of `messages` (role / content JSON objects), the answer's turn opened.
pub fn render(c: &Conv, messages: &[serde_json::Value]) -> Result<String, String> {
    let mut system = c.system_message.to_string();
    let mut turns: Vec<(&str, String)> = Vec::new();
    for m in messages {
        let content = m["content"].as_str().unwrap_or("").to_string();
        match m["role"].as_str().unwrap_or("") {
            "system" => system = content,
            "user" => turns.push((c.roles[0], content)),
            "assistant" => turns.push((c.roles[1], content)),
            r => {
                return Err(format!(
                    "Unknown role: {r} (the {} conversation template has user, assistant and system turns)",
                    c.name
                ))
            }
        }
    }
    turns.push((c.roles[1], String::new()));
    let sp = c.system_template.replace("{system_message}", &system);
    let mut out = head(c, sp, &system);
    for (i, (role, m)) in turns.iter().enumerate() {
        out.push_str(&turn(c, i, role, m));
    }
    if c.style == Style::Qwen2VlEmbed {
        out.push_str(&c.stops.concat());
    }
    Ok(out)
}

/// What comes before the turns: `sp`, the formatted system template (with its separator, where
/// the style writes one), or nothing (`system`: the system message itself).
fn head(c: &Conv, sp: String, system: &str) -> String {
    match c.style {
        Style::AddColonSingle | Style::AddColonTwo | Style::Mpt => sp + c.sep,
        Style::AddNewLineSingle | Style::Qwen2VlEmbed if !sp.is_empty() => sp + c.sep,
        Style::ChatMl if !sp.is_empty() => sp + c.sep + "\n",
        Style::DeepSeekVl2 if !sp.is_empty() => sp + c.sep,
        Style::NoColonSingle | Style::Gemma3 => sp,
        Style::Llama2 if system.is_empty() => "[INST] ".into(),
        Style::Llama2 => sp,
        Style::Llama3 | Style::Llama4 if !system.is_empty() => sp,
        _ => String::new(),
    }
}

/// Turn `i` (`role`'s tag): its text `m` with the style's separators, or when `m` is empty the
/// opening of a turn (the answer's, last).
fn turn(c: &Conv, i: usize, role: &str, m: &str) -> String {
    let seps = [c.sep, c.sep2];
    let open = m.is_empty();
    match c.style {
        Style::AddColonSingle | Style::AddColonTwo | Style::DeepSeekVl2 if open => {
            format!("{role}:")
        }
        Style::AddColonSingle => format!("{role}: {m}{}", c.sep),
        Style::AddColonTwo | Style::DeepSeekVl2 => format!("{role}: {m}{}", seps[i % 2]),
        Style::AddNewLineSingle | Style::Qwen2VlEmbed | Style::ChatMl if open => {
            format!("{role}\n")
        }
        Style::AddNewLineSingle | Style::Qwen2VlEmbed => format!("{role}\n{m}{}", c.sep),
        Style::ChatMl => format!("{role}\n{m}{}\n", c.sep),
        Style::NoColonSingle | Style::Mpt | Style::Gemma3 if open => role.to_string(),
        Style::Gemma3 if i == 0 => format!("{m}{}", c.sep),
        Style::NoColonSingle | Style::Mpt | Style::Gemma3 => format!("{role}{m}{}", c.sep),
        // Llama-2 tags by position, not role.
        Style::Llama2 if open => c.roles[i % 2].to_string(),
        Style::Llama2 if i == 0 => format!("{m} "),
        Style::Llama2 => format!("{} {m}{}", c.roles[i % 2], seps[i % 2]),
        Style::Llama3 | Style::Llama4 => {
            let (o, cl, end) = if c.style == Style::Llama3 {
                ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
            } else {
                ("<|header_start|>", "<|header_end|>", "<|eot|>")
            };
            if open {
                format!("{o}{role}{cl}\n\n")
            } else {
                format!("{o}{role}{cl}\n\n{}{end}", m.trim())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(name: &str, messages: serde_json::Value) -> String {
        render(builtin(name).unwrap(), messages.as_array().unwrap()).unwrap()
    }

    #[test]
    fn chatml_has_its_default_system_and_opens_the_answer() {
        let m = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(
            conv("chatml", m),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let m = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"}]);
        assert_eq!(
            conv("chatml", m),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama2_folds_the_system_into_the_first_instruction() {
        let m = json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "again"}]);
        assert_eq!(
            conv("llama-2", m.clone()),
            "[INST] hi [/INST] yo </s><s>[INST] again [/INST]"
        );
        let mut s = m.as_array().unwrap().clone();
        s.insert(0, json!({"role": "system", "content": "S"}));
        assert_eq!(
            conv("llama-2", json!(s)),
            "[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST] yo </s><s>[INST] again [/INST]"
        );
    }

    #[test]
    fn styles_join_turns_their_own_way() {
        let m = json!([{"role": "user", "content": " hi "}]);
        assert_eq!(
            conv("llava_llama_3", json!([{"role": "system", "content": "S"}, {"role": "user", "content": " hi "}])),
            "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            conv("vicuna_v1.1", m.clone()),
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER:  hi  ASSISTANT:"
        );
        assert_eq!(
            conv("gemma-it", m.clone()),
            "<start_of_turn>user\nYou are a helpful assistant.\n\n hi <end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            conv("qwen2-vl", m.clone()),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n hi <|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(conv("phi-4-mm", m), "<|user|> hi <|end|><|assistant|>");
    }

    #[test]
    fn markers_round_trip_and_tools_are_refused() {
        let c = builtin("mistral").unwrap();
        assert_eq!(of_marker(&marker(c)).unwrap().name, "mistral");
        assert!(of_marker("{{ messages }}").is_none());
        crate::model::chat_template::check(&marker(c)).unwrap();
        let e = render(c, &[json!({"role": "tool", "content": "x"})]).unwrap_err();
        assert!(e.contains("Unknown role: tool"), "{e}");
        assert!(builtin("devstral").is_none());
        assert!(names().contains(&"chatml"));
    }
}
