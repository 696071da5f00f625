//! The `strata` binary: one executable, every role a subcommand.
//!
//! Each subcommand lives in its own file under `cmd/`; this file only wires clap to them. Bench
//! subcommands live under `cmd/bench/`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: KV-cache serving stack (L3 page store, server, router)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline inspection of a page store that no process has open.
    Inspect(cmd::inspect::Args),
    /// The cluster master: membership, heartbeats, HTTP metadata server, metrics.
    Master(cmd::master::Args),
    /// A store node: serves a page store to the cluster.
    Store(cmd::store::Args),
    /// The inference server (flags of `python -m sglang.launch_server`).
    Serve(Box<cmd::serve::Args>),
    /// Write a deterministic random-weight model (Hugging Face layout).
    MakeModel(cmd::make_model::Args),
    /// Benchmarks (engine, store, serve).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// The whole stack on this machine from a built-in default (tiny model, master, store, server,
    /// router) and one request through it.
    Up(cmd::up::Args),
    /// Request router in front of SGLang-compatible workers (regular or PD mode).
    Router(Box<cmd::router::Args>),
    /// The whole deployment under load while faults are injected at seeded times; every answer
    /// checked (docs/chaos.md).
    Chaos(cmd::chaos::Args),
    /// CUDA backend: device info, op checks against the CPU reference, GPU benchmarks.
    Gpu(cmd::gpu::Args),
}

fn main() {
    let args = cmd::master::normalize_args(std::env::args_os());
    let sub = args
        .get(1)
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_string();
    let args = match cmd::compat::strip(args, &implemented_flags(&sub)) {
        Ok((args, ignored)) => {
            cmd::compat::remember(&sub, ignored);
            args
        }
        Err(e) => {
            // A command-line error, like clap's own: exit status 2.
            eprintln!("strata: error: {e}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    if matches!(
        cli.command,
        Command::Inspect(_) | Command::MakeModel(_) | Command::Bench(_)
    ) {
        // Commands whose output is meant for pipes: `| head` ends them quietly, as it does any
        // Unix tool, instead of a "Broken pipe" error. Servers keep SIGPIPE ignored (a client
        // going away must never kill them).
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = run(cli.command) {
        // One line, the cause chain joined by ": ", never a backtrace (RUST_BACKTRACE is for
        // panics, not for a user's mistake).
        eprintln!("strata: error: {e:#}");
        std::process::exit(1);
    }
}

/// The long flag names and aliases (with `--`) that subcommand `sub` defines.
fn implemented_flags(sub: &str) -> std::collections::HashSet<String> {
    use clap::CommandFactory;
    let mut c = Cli::command();
    c.build();
    let mut names: std::collections::HashSet<String> =
        ["--help".to_string(), "--version".to_string()].into();
    if let Some(s) = c.find_subcommand(sub) {
        for a in s.get_arguments() {
            let aliases = a.get_all_aliases().unwrap_or_default();
            for n in a.get_long().into_iter().chain(aliases) {
                names.insert(format!("--{n}"));
            }
        }
    }
    names
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Master(args) => cmd::master::run(args),
        Command::Store(args) => cmd::store::run(args),
        Command::Serve(a) => cmd::serve::run(*a),
        Command::MakeModel(a) => cmd::make_model::run(a),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Router(a) => cmd::router::run(*a),
        Command::Up(a) => cmd::up::run(a),
        Command::Gpu(a) => cmd::gpu::run(a),
        Command::Chaos(a) => cmd::chaos::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every flag and positional argument of every subcommand says what it is.
    #[test]
    fn every_argument_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for s in c.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "strata", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without help:\n{}",
            missing.join("\n")
        );
    }

    /// A foreign flag is either implemented under every one of its names or under none: an alias
    /// of an implemented flag must never be ignored as a compatibility no-op.
    #[test]
    fn foreign_aliases_follow_implemented_flags() {
        for sub in ["serve", "router", "master"] {
            let implemented = super::implemented_flags(sub);
            assert!(implemented.len() > 5, "{sub}");
            for names in crate::cmd::compat::alias_groups(sub) {
                let have: Vec<_> = names.iter().filter(|n| implemented.contains(**n)).collect();
                assert!(
                    have.is_empty() || have.len() == names.len(),
                    "strata {sub} implements {have:?} but not all of {names:?}"
                );
            }
        }
    }

    /// `strata serve ARGS` as the compatibility pass sees it: every flag in `flags` is one serve
    /// implements, ARGS come through unchanged (nothing ignored) and clap parses them.
    fn serve_implements(flags: &[&str], args: &[&str]) {
        let implemented = super::implemented_flags("serve");
        for f in flags {
            assert!(implemented.contains(*f), "{f} is left to the compat pass");
        }
        let args: Vec<std::ffi::OsString> = ["strata", "serve", "--model-path", "/models/m"]
            .iter()
            .chain(args)
            .map(Into::into)
            .collect();
        let (kept, ignored) = crate::cmd::compat::strip(args.clone(), &implemented).unwrap();
        assert_eq!(kept, args);
        assert!(ignored.is_empty());
        if let Err(e) = <Cli as clap::Parser>::try_parse_from(&kept) {
            panic!("{e}");
        }
    }

    /// `--enable-deterministic-inference` is implemented (batch-invariant CUDA runner), so the
    /// compatibility pass leaves it to clap instead of ignoring it with a WARN.
    #[test]
    fn deterministic_inference_is_not_a_compat_no_op() {
        let f = "--enable-deterministic-inference";
        serve_implements(&[f], &[f]);
    }

    /// SGLang's decode CUDA-graph flags (0.5.23 names and the older `--cuda-graph-bs`) are
    /// implemented, not ignored: they reach clap and parse into the serve arguments.
    #[test]
    fn sglang_cuda_graph_flags_are_implemented() {
        serve_implements(
            &[
                "--cuda-graph-bs",
                "--cuda-graph-bs-decode",
                "--cuda-graph-max-bs-decode",
                "--disable-decode-cuda-graph",
            ],
            &[
                "--cuda-graph-bs-decode",
                "1",
                "2",
                "8",
                "--cuda-graph-max-bs-decode",
                "8",
                "--disable-decode-cuda-graph",
            ],
        );
    }

    /// SGLang's scheduling flags are implemented (seeded sampling, stream chunking, the prefill
    /// admission limit, the admission order), not ignored: they reach clap and parse.
    #[test]
    fn sglang_scheduling_flags_are_implemented() {
        serve_implements(
            &[
                "--random-seed",
                "--stream-interval",
                "--max-prefill-tokens",
                "--schedule-policy",
            ],
            &[
                "--random-seed",
                "7",
                "--stream-interval",
                "4",
                "--max-prefill-tokens",
                "4096",
                "--schedule-policy",
                "lpm",
            ],
        );
    }

    /// SGLang's request-handling flags are implemented (the chat template, the queue limit,
    /// prompt truncation, the request log), not ignored: they reach clap and parse.
    #[test]
    fn sglang_request_flags_are_implemented() {
        serve_implements(
            &[
                "--chat-template",
                "--hf-chat-template-name",
                "--max-queued-requests",
                "--allow-auto-truncate",
                "--log-requests",
                "--log-requests-level",
            ],
            &[
                "--chat-template",
                "t.jinja",
                "--hf-chat-template-name",
                "default",
                "--max-queued-requests",
                "8",
                "--allow-auto-truncate",
                "--log-requests",
                "--log-requests-level",
                "3",
            ],
        );
    }

    /// `--tool-call-parser` and `--reasoning-parser` are implemented (function calls and the
    /// reasoning split off chat replies), not ignored: they reach clap and parse.
    #[test]
    fn sglang_parser_flags_are_implemented() {
        serve_implements(
            &["--tool-call-parser", "--reasoning-parser"],
            &[
                "--tool-call-parser",
                "qwen25",
                "--reasoning-parser",
                "qwen3",
            ],
        );
    }

    /// The top-level help names only subcommands that exist.
    #[test]
    fn help_names_only_existing_subcommands() {
        let c = Cli::command();
        let bench = c.find_subcommand("bench").unwrap();
        let about = bench.get_about().unwrap().to_string();
        let list = about
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(l, _)| l)
            .unwrap();
        for name in list.split(", ") {
            assert!(
                bench.find_subcommand(name).is_some(),
                "`strata bench` help names `{name}`, which does not exist"
            );
        }
    }
}
