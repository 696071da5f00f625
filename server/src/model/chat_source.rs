//! Which chat template `/v1/chat/completions` renders: `--chat-template` and
//! `--hf-chat-template-name` against the checkpoint's `tokenizer_config.json`.
//!
//! SGLang's rules where Strata has the same thing, decided once at start-up:
//! - `--chat-template PATH` of a file replaces the checkpoint's template. A Jinja file (any
//!   extension but `.json`) is read as SGLang reads a `.jinja` file: newlines stripped from both
//!   ends, each literal `\n` (backslash, n) turned into a newline. A `.json` file is SGLang's
//!   conversation-template JSON (`name`, `sep_style`, ...: registered and served as the built-in
//!   ones are) or an object with a string `chat_template` (the Hugging Face `chat_template.json`
//!   layout).
//! - `--chat-template NAME` of one of SGLang's built-in conversation templates (`chatml`,
//!   `llama-2`, `vicuna_v1.1`, ...: `conv_template.rs`) serves it as SGLang does. A name of one of
//!   the checkpoint's templates (the list form of `chat_template`) selects that one (a Strata
//!   extension; the built-in names come first, as SGLang knows only those).
//! - Anything else is a start-up error naming the flag, never a silent fallback: a missing file,
//!   a conversation template with a missing field or an unknown `sep_style`, an unknown name, a
//!   template that does not compile.
//! - `--hf-chat-template-name NAME` picks among the checkpoint's named templates (an unknown
//!   name is an error listing them); without it the first is used, as in SGLang. It is ignored,
//!   with a warning, when `--chat-template` is given or the checkpoint has a single template.

use std::path::Path;

/// The template to serve: the flags applied to the checkpoint's `named` templates and its
/// `default` one (what `Tokenizer::load` chose). The error is the start-up message.
pub fn choose(
    flag: Option<&str>,
    hf_name: Option<&str>,
    named: &[(String, String)],
    default: Option<String>,
) -> Result<Option<String>, String> {
    let names = || {
        named
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(flag) = flag else {
        return match hf_name {
            Some(n) if !named.is_empty() => named
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, t)| Some(t.clone()))
                .ok_or_else(|| {
                    format!(
                        "--hf-chat-template-name {n}: the checkpoint has no chat template of that name (it has: {})",
                        names()
                    )
                }),
            Some(n) => {
                tracing::warn!("--hf-chat-template-name {n} is ignored: the checkpoint has a single chat template");
                Ok(default)
            }
            None => Ok(default),
        };
    };
    if let Some(n) = hf_name {
        tracing::warn!("--hf-chat-template-name {n} is ignored: --chat-template is given");
    }
    let path = Path::new(flag);
    let template = if path.is_file() {
        read_file(path).map_err(|e| format!("--chat-template {flag}: {e}"))?
    } else if let Some(c) = super::conv_template::builtin(flag) {
        super::conv_template::marker(c)
    } else if let Some((_, t)) = named.iter().find(|(k, _)| k == flag) {
        t.clone()
    } else {
        let own = if named.is_empty() {
            String::new()
        } else {
            format!(
                ", nor one of the checkpoint's named templates ({})",
                names()
            )
        };
        return Err(format!(
            "--chat-template {flag}: not a file{own}, nor one of SGLang's built-in conversation templates ({})",
            super::conv_template::names().join(", ")
        ));
    };
    super::chat_template::check(&template).map_err(|e| format!("--chat-template {flag}: {e}"))?;
    tracing::info!(
        chat_template = flag,
        "using the chat template given at start-up"
    );
    Ok(Some(template))
}

/// The template text of a `--chat-template` file.
fn read_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        return match v.get("chat_template") {
            Some(serde_json::Value::String(t)) => Ok(t.clone()),
            _ if v.get("sep_style").is_some() => {
                super::conv_template::load_json(&text).map(super::conv_template::marker)
            }
            _ => Err(
                "a .json file must be SGLang's conversation template (with \"sep_style\") or an object with a string \"chat_template\"".into(),
            ),
        };
    }
    Ok(text.trim_matches('\n').replace("\\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> Vec<(String, String)> {
        vec![
            ("default".into(), "D{{ messages[0].content }}".into()),
            ("tool_use".into(), "T{{ messages[0].content }}".into()),
        ]
    }

    #[test]
    fn without_flags_the_default_stays() {
        assert_eq!(
            choose(None, None, &[], Some("x".into())),
            Ok(Some("x".into()))
        );
        assert_eq!(choose(None, None, &[], None), Ok(None));
    }

    #[test]
    fn hf_name_picks_a_named_template_or_fails_listing_them() {
        let n = named();
        let d = Some(n[0].1.clone());
        assert_eq!(
            choose(None, Some("tool_use"), &n, d.clone()),
            Ok(Some(n[1].1.clone()))
        );
        let e = choose(None, Some("rag"), &n, d).unwrap_err();
        assert!(
            e.contains("--hf-chat-template-name rag") && e.contains("default, tool_use"),
            "{e}"
        );
        // A single template: the name is ignored.
        assert_eq!(
            choose(None, Some("rag"), &[], Some("x".into())),
            Ok(Some("x".into()))
        );
    }

    #[test]
    fn a_file_replaces_the_template_and_a_name_selects_one() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("t.jinja");
        std::fs::write(&j, "\n{{ messages[0].content }}\\n!\n\n").unwrap();
        let j = j.to_str().unwrap();
        let got = choose(Some(j), Some("tool_use"), &named(), Some("old".into()));
        assert_eq!(got, Ok(Some("{{ messages[0].content }}\n!".into())));
        // Any extension but .json is Jinja text.
        let t = dir.path().join("t.txt");
        std::fs::write(&t, "X").unwrap();
        assert_eq!(
            choose(Some(t.to_str().unwrap()), None, &[], None),
            Ok(Some("X".into()))
        );
        let js = dir.path().join("chat_template.json");
        std::fs::write(&js, r#"{"chat_template": "J{{ 1 }}"}"#).unwrap();
        let got = choose(Some(js.to_str().unwrap()), None, &[], None);
        assert_eq!(got, Ok(Some("J{{ 1 }}".into())));
        let n = named();
        assert_eq!(
            choose(Some("tool_use"), None, &n, None),
            Ok(Some(n[1].1.clone()))
        );
    }

    #[test]
    fn anything_else_is_an_error_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let e = choose(Some("chatml-2"), None, &named(), None).unwrap_err();
        assert!(
            e.starts_with("--chat-template chatml-2: not a file")
                && e.contains("tool_use")
                && e.contains("vicuna_v1.1"),
            "{e}"
        );
        // SGLang's built-in names are served.
        let got = choose(Some("chatml"), None, &named(), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            super::super::conv_template::of_marker(&got).unwrap().name,
            "chatml"
        );
        // SGLang's conversation-template JSON: served when whole, an error naming what is
        // missing or unknown otherwise.
        let conv = dir.path().join("conv.json");
        std::fs::write(
            &conv,
            r#"{"name": "my-conv", "system": "<sys>", "user": "U", "assistant": "A",
                "sep_style": "ADD_COLON_SINGLE", "sep": "\n", "stop_str": ["</s>"]}"#,
        )
        .unwrap();
        let got = choose(Some(conv.to_str().unwrap()), None, &[], None)
            .unwrap()
            .unwrap();
        let c = super::super::conv_template::of_marker(&got).unwrap();
        assert_eq!((c.name, c.stops), ("my-conv", &["</s>"][..]));
        for (text, want) in [
            (r#"{"name": "x", "sep_style": "CHATML"}"#, "no \"system\""),
            (
                r#"{"name": "x", "system": "", "user": "U", "assistant": "A", "sep_style": "FANCY"}"#,
                "Unknown separator style: FANCY",
            ),
        ] {
            std::fs::write(&conv, text).unwrap();
            let e = choose(Some(conv.to_str().unwrap()), None, &[], None).unwrap_err();
            assert!(e.contains("--chat-template") && e.contains(want), "{e}");
        }
        let bad = dir.path().join("bad.jinja");
        std::fs::write(&bad, "{% for m in messages %}").unwrap();
        let e = choose(Some(bad.to_str().unwrap()), None, &[], None).unwrap_err();
        assert!(
            e.contains("--chat-template") && e.contains("chat template"),
            "{e}"
        );
    }
}
