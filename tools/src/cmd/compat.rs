//! Launch flags of SGLang, sglang-router and Mooncake that Strata does not implement: accepted and
//! ignored, so that a `python -m sglang.launch_server`, `sglang_router.launch_router` or
//! `mooncake_master` command line starts `strata serve`, `strata router` or `strata master`
//! unchanged (docs/server.md, "Launch flags").
//!
//! Before clap sees the command line, [`strip`] removes every flag that the subcommand does not
//! define but the program it stands in for does (tables in `compat_flags.rs`), together with its
//! values as that program would consume them. Each removed flag becomes one WARN line once
//! logging is up ([`log_ignored`]). Flags Strata defines are left to clap untouched, and a flag
//! neither knows still reaches clap, which rejects it by name. A few flags are refused with an
//! error instead, because ignoring them would silently weaken security (TLS, admin or JWT
//! authentication).

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::OnceLock;

use super::compat_flags::{MOONCAKE_MASTER, SGLANG_ROUTER, SGLANG_SERVER};

/// How many values a foreign flag takes (the KIND column of `compat_flags.rs`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Arity {
    /// `0`: none.
    Zero,
    /// `1`: exactly one.
    One,
    /// `+`: one or more.
    OneOrMore,
    /// `*`: zero or more.
    Any,
    /// `?`: zero or one.
    Optional,
    /// `b`: a gflags bool (`--x`, `--x=false`, `--nox`), never a separate value.
    GflagsBool,
}

/// One foreign flag removed from the command line.
#[derive(Debug, PartialEq)]
pub struct Ignored {
    /// The flag as written (without `=value`).
    pub flag: String,
    /// Its values, in order.
    pub values: Vec<String>,
}

static IGNORED: OnceLock<(&'static str, Vec<Ignored>)> = OnceLock::new();

/// The foreign program a subcommand stands in for, and its flag table.
fn table_for(sub: &str) -> Option<(&'static str, &'static str)> {
    match sub {
        "serve" => Some(("sglang.launch_server", SGLANG_SERVER)),
        "router" => Some(("sglang_router.launch_router", SGLANG_ROUTER)),
        "master" => Some(("mooncake_master", MOONCAKE_MASTER)),
        _ => None,
    }
}

/// Parses a flag table into name -> arity (aliases included).
fn parse_table(src: &str) -> Vec<(&str, Arity)> {
    let mut out = Vec::new();
    for line in src.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.split_whitespace();
        let arity = match parts.next() {
            Some("0") => Arity::Zero,
            Some("1") => Arity::One,
            Some("+") => Arity::OneOrMore,
            Some("*") => Arity::Any,
            Some("?") => Arity::Optional,
            Some("b") => Arity::GflagsBool,
            other => panic!("compat_flags.rs: bad kind {other:?} in {line:?}"),
        };
        out.extend(parts.map(|n| (n, arity)));
    }
    out
}

/// The names of each foreign flag (name and aliases together), for subcommand `sub`.
#[cfg(test)]
pub fn alias_groups(sub: &str) -> Vec<Vec<&'static str>> {
    let Some((_, src)) = table_for(sub) else {
        return Vec::new();
    };
    src.lines()
        .filter_map(|l| {
            let names: Vec<&str> = l.split_whitespace().skip(1).collect();
            (!names.is_empty()).then_some(names)
        })
        .collect()
}

/// Flags refused rather than ignored: running without them would expose what the user meant to
/// protect. Each with the reason printed in the error.
fn refused(name: &str) -> Option<&'static str> {
    const NO_TLS: &str = "Strata serves plain HTTP only; terminate TLS in front of it";
    match name {
        "--ssl-keyfile"
        | "--ssl-certfile"
        | "--ssl-ca-certs"
        | "--ssl-keyfile-password"
        | "--enable-ssl-refresh"
        | "--tls-cert-path"
        | "--tls-key-path"
        | "--client-cert-path"
        | "--client-key-path"
        | "--ca-cert-paths" => Some(NO_TLS),
        "--admin-api-key" => {
            Some("there is no separate admin key; use --api-key, which guards every route")
        }
        "--jwt-issuer" | "--jwt-audience" | "--jwt-jwks-uri" | "--jwt-role-mapping" => {
            Some("JWT authentication is not implemented; use --api-key")
        }
        "--control-plane-api-keys" => Some("control-plane keys are not implemented; use --api-key"),
        _ => None,
    }
}

/// What Strata does instead, for ignored flags where that is worth saying.
fn note(name: &str) -> Option<&'static str> {
    match name {
        "--enable-metrics" => Some("/metrics is always served"),
        _ => None,
    }
}

/// Whether `s` reads as an option rather than a value (argparse's rule: a leading `-` that is
/// not a negative number).
fn looks_like_option(s: &str) -> bool {
    s.starts_with('-') && s.len() > 1 && s[1..].parse::<f64>().is_err()
}

/// Removes the foreign flags of subcommand `args[1]` that `implemented` (the long names and
/// aliases the subcommand defines, with `--`) does not contain. Returns the remaining arguments
/// and what was removed; an error for a refused flag or a foreign flag missing its value.
pub fn strip(
    args: Vec<OsString>,
    implemented: &HashSet<String>,
) -> Result<(Vec<OsString>, Vec<Ignored>), String> {
    let Some((program, src)) = args.get(1).and_then(|s| s.to_str()).and_then(table_for) else {
        return Ok((args, Vec::new()));
    };
    let table = parse_table(src);
    let lookup = |n: &str| table.iter().find(|(name, _)| *name == n).map(|(_, a)| *a);
    let mut out = Vec::with_capacity(args.len());
    let mut ignored = Vec::new();
    let mut it = args.into_iter().peekable();
    out.extend(it.by_ref().take(2));
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(it.by_ref());
            break;
        }
        let Some(s) = arg.to_str().filter(|s| s.starts_with("--")) else {
            out.push(arg);
            continue;
        };
        let (name, inline) = match s.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (s.to_string(), None),
        };
        if implemented.contains(&name) {
            out.push(arg);
            continue;
        }
        let arity = match lookup(&name) {
            Some(a) => a,
            // gflags' `--noflag` spelling of a bool.
            None => match name.strip_prefix("--no").map(|r| format!("--{r}")) {
                Some(pos) if lookup(&pos) == Some(Arity::GflagsBool) => Arity::GflagsBool,
                _ => {
                    out.push(arg);
                    continue;
                }
            },
        };
        if let Some(why) = refused(&name) {
            return Err(format!("{name} ({program}) is not supported: {why}"));
        }
        let mut values: Vec<String> = inline.into_iter().collect();
        let next_value = |it: &mut std::iter::Peekable<std::vec::IntoIter<OsString>>| {
            let v = it.peek()?.to_str()?;
            (!looks_like_option(v)).then(|| v.to_string())
        };
        if values.is_empty() {
            match arity {
                Arity::Zero | Arity::GflagsBool => {}
                Arity::One | Arity::Optional => {
                    if let Some(v) = next_value(&mut it) {
                        it.next();
                        values.push(v);
                    }
                }
                Arity::OneOrMore | Arity::Any => {
                    while let Some(v) = next_value(&mut it) {
                        it.next();
                        values.push(v);
                    }
                }
            }
            if values.is_empty() && matches!(arity, Arity::One | Arity::OneOrMore) {
                return Err(format!("{name} ({program}) expects a value"));
            }
        }
        ignored.push(Ignored { flag: name, values });
    }
    Ok((out, ignored))
}

/// Keeps what [`strip`] removed for [`log_ignored`].
pub fn remember(sub: &str, ignored: Vec<Ignored>) {
    if let Some((program, _)) = table_for(sub) {
        let _ = IGNORED.set((program, ignored));
    }
}

/// One WARN line per ignored flag (called once logging is set up).
pub fn log_ignored() {
    let Some((program, ignored)) = IGNORED.get() else {
        return;
    };
    for i in ignored {
        let shown = if i.values.is_empty() {
            i.flag.clone()
        } else {
            format!("{} {}", i.flag, i.values.join(" "))
        };
        match note(&i.flag) {
            Some(n) => tracing::warn!(
                "accepted for compatibility with {program}, no effect: {shown} ({n})"
            ),
            None => tracing::warn!("accepted for compatibility with {program}, no effect: {shown}"),
        }
    }
}

#[cfg(test)]
#[path = "compat_tests.rs"]
mod tests;
