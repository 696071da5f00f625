//! Rendering the checkpoint's Jinja chat template (`tokenizer_config.json`) with `minijinja`.
//!
//! The template sees `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and a
//! `raise_exception` function, as in `transformers`. Template errors become request errors.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// One chat message as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Compiles `template` without rendering it (a start-up check of `--chat-template`).
pub fn check(template: &str) -> Result<(), String> {
    let mut env = Environment::new();
    env.add_function("raise_exception", raise_exception);
    env.add_template("chat", template)
        .map(|_| ())
        .map_err(|e| format!("chat template: {e}"))
}

/// Renders `template` for `messages`.
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, String> {
    let mut env = Environment::new();
    env.add_function("raise_exception", raise_exception);
    env.add_template("chat", template)
        .map_err(|e| format!("chat template: {e}"))?;
    let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token.unwrap_or(""),
        eos_token => eos_token.unwrap_or(""),
    })
    .map_err(|e| format!("chat template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let m = [ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }];
        let s = render(t, &m, true, None, None).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }
}
