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
//!
//! SGLang's conversation-template JSON files (`--chat-template t.json` with `name`, `system`,
//! `user`, `assistant`, `sep_style`, `sep`, `stop_str`, `system_message`) are read by
//! [`load_json`] and registered under their name (replacing a built-in one of that name, as
//! SGLang's registration does), with any of SGLang's 25 separator styles.

use std::sync::{Mutex, OnceLock};

/// How a template joins its turns (SGLang's `SeparatorStyle`; the names are its enum names).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    AddColonSingle,
    AddColonTwo,
    AddColonSpaceSingle,
    NoColonSingle,
    NoColonTwo,
    AddNewLineSingle,
    Llama2,
    Llama3,
    Llama4,
    ChatGlm,
    ChatMl,
    ChatIntern,
    Dolly,
    Rwkv,
    Phoenix,
    Robin,
    FalconChat,
    ChatGlm3,
    DeepSeekChat,
    MetaMath,
    DeepSeekVl2,
    Qwen2VlEmbed,
    Qwen2Audio,
    Gemma3,
    Mpt,
}

/// SGLang's `SeparatorStyle` member names, in its order.
const STYLE_NAMES: &[(&str, Style)] = &[
    ("ADD_COLON_SINGLE", Style::AddColonSingle),
    ("ADD_COLON_TWO", Style::AddColonTwo),
    ("ADD_COLON_SPACE_SINGLE", Style::AddColonSpaceSingle),
    ("NO_COLON_SINGLE", Style::NoColonSingle),
    ("NO_COLON_TWO", Style::NoColonTwo),
    ("ADD_NEW_LINE_SINGLE", Style::AddNewLineSingle),
    ("LLAMA2", Style::Llama2),
    ("LLAMA3", Style::Llama3),
    ("LLAMA4", Style::Llama4),
    ("CHATGLM", Style::ChatGlm),
    ("CHATML", Style::ChatMl),
    ("CHATINTERN", Style::ChatIntern),
    ("DOLLY", Style::Dolly),
    ("RWKV", Style::Rwkv),
    ("PHOENIX", Style::Phoenix),
    ("ROBIN", Style::Robin),
    ("FALCON_CHAT", Style::FalconChat),
    ("CHATGLM3", Style::ChatGlm3),
    ("DEEPSEEK_CHAT", Style::DeepSeekChat),
    ("METAMATH", Style::MetaMath),
    ("DeepSeekVL2", Style::DeepSeekVl2),
    ("QWEN2_VL_EMBED", Style::Qwen2VlEmbed),
    ("QWEN2_AUDIO", Style::Qwen2Audio),
    ("GEMMA3", Style::Gemma3),
    ("MPT", Style::Mpt),
];

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

/// Templates read from JSON files, newest last (they live for the process).
fn registered() -> &'static Mutex<Vec<&'static Conv>> {
    static R: OnceLock<Mutex<Vec<&'static Conv>>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

/// The template `name`: one registered from a JSON file (the newest of that name), else the
/// built-in one.
pub fn builtin(name: &str) -> Option<&'static Conv> {
    let r = registered()
        .lock()
        .expect("templates")
        .iter()
        .rev()
        .find(|c| c.name == name)
        .copied();
    r.or_else(|| TEMPLATES.iter().find(|c| c.name == name))
}

/// The names, for error messages.
pub fn names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|c| c.name).collect()
}

/// Reads and registers SGLang's conversation-template JSON `text` (SGLang's loader: the system
/// template is `system` + `"\n{system_message}"`, roles `user` / `assistant`, `sep` "\n" by
/// default; `stop_str` a string or a list). `sep2` (which SGLang's loader leaves unset) is taken
/// when given. The error names the missing or bad field.
pub fn load_json(text: &str) -> Result<&'static Conv, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let field = |k: &str, default: Option<&str>| -> Result<&'static str, String> {
        match v.get(k) {
            Some(serde_json::Value::String(s)) => Ok(leak(s.clone())),
            None | Some(serde_json::Value::Null) => default
                .map(|d| leak(d.to_string()))
                .ok_or_else(|| format!("the conversation template has no \"{k}\"")),
            Some(x) => Err(format!(
                "the conversation template's \"{k}\" must be a string, got {x}"
            )),
        }
    };
    let style_name = field("sep_style", None)?;
    let style = STYLE_NAMES
        .iter()
        .find(|(n, _)| *n == style_name)
        .map(|&(_, s)| s)
        .ok_or_else(|| {
            format!(
                "Unknown separator style: {style_name} (SGLang's are {})",
                STYLE_NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let stops: Vec<&'static str> = match v.get("stop_str") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![leak(s.clone())],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(|s| leak(s.to_string())))
            .collect::<Option<_>>()
            .ok_or(
                "the conversation template's \"stop_str\" must be a string or a list of strings",
            )?,
        Some(x) => {
            return Err(format!(
                "the conversation template's \"stop_str\" must be a string or a list, got {x}"
            ))
        }
    };
    let c: &'static Conv = Box::leak(Box::new(Conv {
        name: field("name", None)?,
        system_template: leak(format!("{}\n{{system_message}}", field("system", None)?)),
        system_message: field("system_message", Some(""))?,
        roles: [field("user", None)?, field("assistant", None)?],
        style,
        sep: field("sep", Some("\n"))?,
        sep2: field("sep2", Some(""))?,
        stops: Box::leak(stops.into_boxed_slice()),
    }));
    registered().lock().expect("templates").push(c);
    Ok(c)
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
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
    use Style::*;
    match c.style {
        AddColonSingle | AddColonTwo | AddColonSpaceSingle | Mpt | Robin => sp + c.sep,
        AddNewLineSingle | Qwen2VlEmbed | Qwen2Audio | ChatGlm | MetaMath | DeepSeekVl2
            if !sp.is_empty() =>
        {
            sp + c.sep
        }
        ChatMl if !sp.is_empty() => sp + c.sep + "\n",
        NoColonSingle | NoColonTwo | Gemma3 | Rwkv | ChatIntern | Dolly | Phoenix
        | DeepSeekChat => sp,
        Llama2 if system.is_empty() => "[INST] ".into(),
        Llama2 => sp,
        Llama3 | Llama4 | ChatGlm3 if !system.is_empty() => sp,
        FalconChat if !system.is_empty() => sp + c.sep,
        _ => String::new(),
    }
}

/// Turn `i` (`role`'s tag): its text `m` with the style's separators, or when `m` is empty the
/// opening of a turn (the answer's, last).
fn turn(c: &Conv, i: usize, role: &str, m: &str) -> String {
    use Style::*;
    let seps = [c.sep, c.sep2];
    let open = m.is_empty();
    match c.style {
        AddColonSingle | AddColonTwo | DeepSeekVl2 | DeepSeekChat | FalconChat | Rwkv if open => {
            format!("{role}:")
        }
        // Its open turn ends with a space.
        AddColonSpaceSingle if open => format!("{role}: "),
        AddColonSingle | AddColonSpaceSingle | FalconChat => format!("{role}: {m}{}", c.sep),
        AddColonTwo | DeepSeekVl2 | DeepSeekChat => format!("{role}: {m}{}", seps[i % 2]),
        Rwkv => format!(
            "{role}: {}\n\n",
            m.replace("\r\n", "\n").replace("\n\n", "\n")
        ),
        AddNewLineSingle | Qwen2VlEmbed | Qwen2Audio | ChatMl if open => format!("{role}\n"),
        AddNewLineSingle | Qwen2VlEmbed | Qwen2Audio => format!("{role}\n{m}{}", c.sep),
        ChatMl => format!("{role}\n{m}{}\n", c.sep),
        NoColonSingle | NoColonTwo | Mpt | Gemma3 | ChatGlm3 if open => role.to_string(),
        Gemma3 if i == 0 => format!("{m}{}", c.sep),
        NoColonSingle | Mpt | Gemma3 => format!("{role}{m}{}", c.sep),
        NoColonTwo => format!("{role}{m}{}", seps[i % 2]),
        ChatGlm3 => format!("{role}\n{m}"),
        ChatGlm => {
            // chatglm2 counts rounds from 1.
            let round = if i % 2 == 0 {
                let first = usize::from(c.name == "chatglm2");
                format!("[Round {}]{}", i / 2 + first, c.sep)
            } else {
                String::new()
            };
            if open {
                format!("{round}{role}：")
            } else {
                format!("{round}{role}：{m}{}", c.sep)
            }
        }
        ChatIntern => {
            let s = if i % 2 == 0 { "<s>" } else { "" };
            if open {
                format!("{s}{role}:")
            } else {
                format!("{s}{role}:{m}{}\n", seps[i % 2])
            }
        }
        Dolly if open => format!("{role}:\n"),
        Dolly => {
            let end = if i % 2 == 1 { "\n\n" } else { "" };
            format!("{role}:\n{m}{}{end}", seps[i % 2])
        }
        Phoenix if open => format!("{role}: <s>"),
        Phoenix => format!("{role}: <s>{m}</s>"),
        Robin if open => format!("{role}:\n"),
        Robin => format!("{role}:\n{m}{}", c.sep),
        MetaMath => {
            // sep2 prefixes the assistant's text.
            let (start, end) = if i % 2 == 0 {
                (":\n".to_string(), c.sep)
            } else {
                (format!(": {}", c.sep2), "")
            };
            if open {
                format!("{role}{start}")
            } else {
                format!("{role}{start}{m}{end}")
            }
        }
        // Llama-2 tags by position, not role.
        Llama2 if open => c.roles[i % 2].to_string(),
        Llama2 if i == 0 => format!("{m} "),
        Llama2 => format!("{} {m}{}", c.roles[i % 2], seps[i % 2]),
        Llama3 | Llama4 => {
            let (o, cl, end) = if c.style == Llama3 {
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

    /// A JSON template of `style` with SGLang's loader defaults (system `S` + "\n" + message).
    fn json_conv(name: &str, style: &str, extra: &str) -> &'static Conv {
        load_json(&format!(
            r#"{{"name": "{name}", "system": "S", "user": "U", "assistant": "A",
                "sep_style": "{style}", "system_message": "m"{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn json_templates_render_every_separator_style_as_sglang_does() {
        // Expected strings follow SGLang's get_prompt for messages [U: "hi", A: "yo", U: "q"]
        // and the open answer; the system prompt is "S\nm".
        let m = json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "q"}]);
        let m = m.as_array().unwrap();
        for (style, extra, want) in [
            ("ADD_COLON_SINGLE", "", "S\nm\nU: hi\nA: yo\nU: q\nA:"),
            (
                "ADD_COLON_TWO",
                r#", "sep": " ", "sep2": "</s>""#,
                "S\nm U: hi A: yo</s>U: q A:",
            ),
            (
                "ADD_COLON_SPACE_SINGLE",
                "",
                "S\nm\nU: hi\nA: yo\nU: q\nA: ",
            ),
            (
                "NO_COLON_TWO",
                r#", "sep": "|", "sep2": "~""#,
                "S\nmUhi|Ayo~Uq|A",
            ),
            ("RWKV", "", "S\nmU: hi\n\nA: yo\n\nU: q\n\nA:"),
            (
                "CHATGLM",
                "",
                "S\nm\n[Round 0]\nU：hi\nA：yo\n[Round 1]\nU：q\nA：",
            ),
            ("CHATGLM3", "", "S\nmU\nhiA\nyoU\nqA"),
            (
                "CHATINTERN",
                r#", "sep": "<e>", "sep2": "<f>""#,
                "S\nm<s>U:hi<e>\nA:yo<f>\n<s>U:q<e>\nA:",
            ),
            (
                "DOLLY",
                r#", "sep": "~", "sep2": "$""#,
                "S\nmU:\nhi~A:\nyo$\n\nU:\nq~A:\n",
            ),
            (
                "PHOENIX",
                "",
                "S\nmU: <s>hi</s>A: <s>yo</s>U: <s>q</s>A: <s>",
            ),
            ("ROBIN", "", "S\nm\nU:\nhi\nA:\nyo\nU:\nq\nA:\n"),
            ("FALCON_CHAT", "", "S\nm\nU: hi\nA: yo\nU: q\nA:"),
            (
                "METAMATH",
                r#", "sep": "\n\n", "sep2": "Let's think.""#,
                "S\nm\n\nU:\nhi\n\nA: Let's think.yoU:\nq\n\nA: Let's think.",
            ),
            (
                "DEEPSEEK_CHAT",
                r#", "sep": "\n\n", "sep2": "<end>""#,
                "S\nmU: hi\n\nA: yo<end>U: q\n\nA:",
            ),
            ("QWEN2_AUDIO", "", "S\nm\nU\nhi\nA\nyo\nU\nq\nA\n"),
        ] {
            let c = json_conv(&format!("t-{style}"), style, extra);
            assert_eq!(render(c, m).unwrap(), want, "{style}");
        }
        // CHATGLM's rounds count from 1 for `chatglm2`, as SGLang special-cases that name.
        let c = json_conv("chatglm2", "CHATGLM", "");
        assert!(render(c, m).unwrap().starts_with("S\nm\n[Round 1]\nU：hi"));
    }

    #[test]
    fn a_json_template_replaces_a_builtin_of_its_name() {
        let c = json_conv(
            "points-v15-chat",
            "ADD_COLON_SINGLE",
            r#", "stop_str": "STOP""#,
        );
        assert!(std::ptr::eq(builtin("points-v15-chat").unwrap(), c));
        assert_eq!(of_marker(&marker(c)).unwrap().stops, &["STOP"]);
        for (text, want) in [
            ("{", "EOF"),
            (
                r#"{"name": "x", "system": "", "user": "U", "assistant": "A"}"#,
                "no \"sep_style\"",
            ),
            (
                r#"{"name": "x", "system": "", "user": 1, "assistant": "A", "sep_style": "MPT"}"#,
                "\"user\" must be a string",
            ),
            (
                r#"{"name": "x", "system": "", "user": "U", "assistant": "A", "sep_style": "MPT", "stop_str": 3}"#,
                "stop_str",
            ),
        ] {
            let e = load_json(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
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
