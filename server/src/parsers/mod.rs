//! The output parsers of `/v1/chat/completions`: `--tool-call-parser` (function calls in the
//! model's text, [`tool_call`]) and `--reasoning-parser` (the thinking part, [`reasoning`]), with
//! the stream that runs both over a reply as it arrives ([`output`]). SGLang's formats and names;
//! docs/server.md ("Tool calls and reasoning") says where Strata decides differently.

pub mod marked;
pub mod output;
pub mod pyjson;
pub mod pythonic;
pub mod reasoning;
pub mod tool_call;

/// A `--tool-call-parser` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolParser {
    /// `<tool_call>\n{"name": .., "arguments": ..}\n</tool_call>` (Qwen 2.5, Qwen 3).
    Qwen25,
    /// `<tool_call>{json}</tool_call>`; the last block may be left open.
    Hermes,
    /// `{"name": .., "parameters"|"arguments": ..}` at the start or after `<|python_tag|>`,
    /// several separated by `;`.
    Llama3,
    /// `[TOOL_CALLS] [{json}, ...]` (or the compact `[TOOL_CALLS]name[ARGS]{json}`).
    Mistral,
    /// `[f(a=1), g(b="x")]` with Python literals.
    Pythonic,
    /// `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name` and a ```json
    /// block (DeepSeek-V3, R1).
    DeepSeekV3,
    /// `<｜tool▁call▁begin｜>name<｜tool▁sep｜>{json}<｜tool▁call▁end｜>` (DeepSeek-V3.1).
    DeepSeekV31,
    /// `<|tool_call_begin|>functions.name:0<|tool_call_argument_begin|>{json}` (Kimi-K2).
    KimiK2,
    /// `<tool_call>name` and `<arg_key>`/`<arg_value>` pairs (GLM-4.5, GLM-4.6).
    Glm45,
    /// `<tool_call><function=name><parameter=k>v</parameter></function>` (Qwen3-Coder).
    Qwen3Coder,
    /// `[{"name": .., "parameters": ..}, ...]`, the whole reply: what `tool_choice` `required`
    /// or a named function constrains the reply to (SGLang's JSON-array form; not a flag).
    JsonArray,
}

impl ToolParser {
    pub const NAMES: &'static [&'static str] = &[
        "deepseekv3",
        "deepseekv31",
        "glm45",
        "hermes",
        "kimi_k2",
        "llama3",
        "mistral",
        "pythonic",
        "qwen25",
        "qwen3_coder",
    ];

    /// The parser `--tool-call-parser NAME` names; the error is the start-up message.
    pub fn from_flag(name: &str) -> Result<Self, String> {
        Ok(match name {
            // SGLang's alias names too: `qwen` for Qwen 2.5/3, `glm` / `glm4` for GLM-4.5's.
            "qwen25" | "qwen" => Self::Qwen25,
            "hermes" => Self::Hermes,
            "deepseekv3" => Self::DeepSeekV3,
            "deepseekv31" => Self::DeepSeekV31,
            "kimi_k2" => Self::KimiK2,
            "glm45" | "glm" | "glm4" => Self::Glm45,
            "qwen3_coder" => Self::Qwen3Coder,
            "llama3" => Self::Llama3,
            "mistral" => Self::Mistral,
            "pythonic" => Self::Pythonic,
            _ => {
                return Err(format!(
                    "--tool-call-parser {name}: unknown or not implemented parser (known: {})",
                    Self::NAMES.join(", ")
                ))
            }
        })
    }
}

/// A `--reasoning-parser` format (`<think>`/`</think>` but Kimi's `◁think▷`/`◁/think▷`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningParser {
    /// The reply is reasoning up to `</think>`, whether or not it opens with `<think>`.
    DeepSeekR1,
    /// As DeepSeek-R1 unless the request's `chat_template_kwargs.enable_thinking` is false; then
    /// only a reply that opens with `<think>` has reasoning. `<tool_call>` also ends it.
    Qwen3,
    /// Qwen3's markers, always reasoning first (`qwen3-thinking`: the Thinking-2507 models).
    Qwen3Thinking,
    /// Reasoning first only when `chat_template_kwargs.thinking` is true (`deepseek-v3`:
    /// DeepSeek-V3.1's hybrid thinking).
    DeepSeekV3,
    /// As Qwen3 (`glm45`: GLM-4.5 / 4.6 reason unless `enable_thinking` is false; SGLang maps
    /// `kimi_k2`, `minimax` and `interns1` to the same detector).
    Glm45,
    /// `kimi` (Kimi-VL thinking models): `◁think▷`/`◁/think▷`, reasoning only when the reply
    /// opens with the start marker.
    Kimi,
}

impl ReasoningParser {
    pub const NAMES: &'static [&'static str] = &[
        "deepseek-r1",
        "deepseek-v3",
        "glm45",
        "interns1",
        "kimi",
        "kimi_k2",
        "minimax",
        "qwen3",
        "qwen3-thinking",
        "step3",
        "step3p5",
    ];

    /// The parser `--reasoning-parser NAME` names; the error is the start-up message.
    pub fn from_flag(name: &str) -> Result<Self, String> {
        match name {
            // SGLang's step3 / step3p5 use DeepSeek-R1's detector (reasoning from the start).
            "deepseek-r1" | "step3" | "step3p5" => Ok(Self::DeepSeekR1),
            "qwen3" => Ok(Self::Qwen3),
            // SGLang gives these Qwen3's detector, as glm45 (reasoning unless `enable_thinking`
            // is false).
            "kimi_k2" | "minimax" | "interns1" => Ok(Self::Glm45),
            "kimi" => Ok(Self::Kimi),
            "qwen3-thinking" => Ok(Self::Qwen3Thinking),
            "deepseek-v3" => Ok(Self::DeepSeekV3),
            "glm45" => Ok(Self::Glm45),
            _ => Err(format!(
                "--reasoning-parser {name}: unknown or not implemented parser (known: {})",
                Self::NAMES.join(", ")
            )),
        }
    }

    /// Whether `<tool_call>` also ends the reasoning (the Qwen3 family's templates).
    pub fn tool_call_ends_reasoning(self) -> bool {
        matches!(self, Self::Qwen3 | Self::Qwen3Thinking | Self::Glm45)
    }

    /// The reasoning's start and end markers.
    pub fn markers(self) -> (&'static str, &'static str) {
        match self {
            Self::Kimi => ("\u{25c1}think\u{25b7}", "\u{25c1}/think\u{25b7}"),
            _ => ("<think>", "</think>"),
        }
    }
}

/// One function call found in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text, spaced as Python's `json.dumps` (see [`pyjson`]).
    pub arguments: String,
}

/// A fresh tool call id, as SGLang makes them: `call_` and 24 hex digits.
pub fn call_id() -> String {
    hex_id("call_", 24)
}

/// `prefix` and `digits` random hex digits.
pub fn hex_id(prefix: &str, digits: usize) -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..digits).fold(String::from(prefix), |mut s, _| {
        s.push(char::from_digit(r.random_range(0..16), 16).expect("hex digit"));
        s
    })
}

#[cfg(test)]
mod tests;
