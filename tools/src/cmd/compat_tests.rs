//! Unit tests of the foreign-flag pre-pass (`compat.rs`): value consumption for every arity,
//! implemented flags left alone, unknown flags passed on to clap, refusals.

use super::*;

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn implemented(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn ig(flag: &str, values: &[&str]) -> Ignored {
    Ignored {
        flag: flag.into(),
        values: values.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn every_table_parses_and_names_are_unique() {
    for sub in ["serve", "router", "master"] {
        let (_, src) = table_for(sub).unwrap();
        let t = parse_table(src);
        assert!(t.len() > 50, "{sub}: {} flags", t.len());
        let mut seen = HashSet::new();
        for (n, _) in &t {
            assert!(n.starts_with("--"), "{sub}: {n}");
            assert!(seen.insert(*n), "{sub}: {n} listed twice");
        }
    }
}

#[test]
fn server_flags_of_every_arity_are_removed_with_their_values() {
    let args = os(&[
        "strata",
        "serve",
        "--model-path",
        "/m",
        "--grammar-backend",
        "xgrammar",
        "--trust-remote-code",
        "--enable-torch-compile",
        "--attention-backend=triton",
        "--watchdog-timeout",
        "-1",
        "--cuda-graph-bs-decode",
        "1",
        "2",
        "4",
        "--port",
        "0",
        "--lora-paths",
        "--enable-tf32-matmul",
        "--no-enable-tf32-matmul",
        "--model-checksum",
        "--uvicorn-access-log-exclude-prefixes",
        "/health",
        "--page-size",
        "4",
    ]);
    let imp = implemented(&[
        "--model-path",
        "--trust-remote-code",
        "--port",
        "--page-size",
    ]);
    let (rest, ignored) = strip(args, &imp).unwrap();
    assert_eq!(
        rest,
        os(&[
            "strata",
            "serve",
            "--model-path",
            "/m",
            "--trust-remote-code",
            "--port",
            "0",
            "--page-size",
            "4"
        ])
    );
    assert_eq!(
        ignored,
        vec![
            ig("--grammar-backend", &["xgrammar"]),
            ig("--enable-torch-compile", &[]),
            ig("--attention-backend", &["triton"]),
            ig("--watchdog-timeout", &["-1"]),
            ig("--cuda-graph-bs-decode", &["1", "2", "4"]),
            ig("--lora-paths", &[]),
            ig("--enable-tf32-matmul", &[]),
            ig("--no-enable-tf32-matmul", &[]),
            ig("--model-checksum", &[]),
            ig("--uvicorn-access-log-exclude-prefixes", &["/health"]),
        ]
    );
}

#[test]
fn unknown_flags_and_everything_after_double_dash_reach_clap() {
    let args = os(&[
        "strata",
        "serve",
        "--grammar-backendd",
        "x",
        "--",
        "--grammar-backend",
    ]);
    let (rest, ignored) = strip(args.clone(), &implemented(&[])).unwrap();
    assert_eq!(rest, args);
    assert!(ignored.is_empty());
    // Subcommands without a table are never touched.
    let args = os(&["strata", "store", "--grammar-backend", "x"]);
    assert_eq!(strip(args.clone(), &implemented(&[])).unwrap().0, args);
}

#[test]
fn missing_value_and_refused_flags_are_errors() {
    let e = strip(
        os(&["strata", "serve", "--grammar-backend"]),
        &implemented(&[]),
    )
    .unwrap_err();
    assert_eq!(
        e,
        "--grammar-backend (sglang.launch_server) expects a value"
    );
    let e = strip(
        os(&["strata", "serve", "--tokenizer-mode", "--port", "1"]),
        &implemented(&["--port"]),
    )
    .unwrap_err();
    assert!(e.contains("--tokenizer-mode"), "{e}");
    let e = strip(
        os(&["strata", "serve", "--ssl-certfile", "c.pem"]),
        &implemented(&[]),
    )
    .unwrap_err();
    assert!(
        e.starts_with("--ssl-certfile (sglang.launch_server) is not supported"),
        "{e}"
    );
    let e = strip(
        os(&["strata", "router", "--jwt-issuer", "x"]),
        &implemented(&[]),
    )
    .unwrap_err();
    assert!(e.contains("JWT"), "{e}");
}

#[test]
fn router_flags_including_lists() {
    let args = os(&[
        "strata",
        "router",
        "--worker-urls",
        "http://a:1",
        "--selector",
        "app=a",
        "tier=b",
        "--dp-aware",
        "--cors-allowed-origins",
        "--log-dir=/tmp/x",
        "--port",
        "0",
    ]);
    let imp = implemented(&["--worker-urls", "--port"]);
    let (rest, ignored) = strip(args, &imp).unwrap();
    assert_eq!(
        rest,
        os(&[
            "strata",
            "router",
            "--worker-urls",
            "http://a:1",
            "--port",
            "0"
        ])
    );
    assert_eq!(
        ignored,
        vec![
            ig("--selector", &["app=a", "tier=b"]),
            ig("--dp-aware", &[]),
            ig("--cors-allowed-origins", &[]),
            ig("--log-dir", &["/tmp/x"]),
        ]
    );
}

#[test]
fn gflags_bools_never_take_a_separate_value() {
    // As after `master::normalize_args` (underscores already dashes).
    let args = os(&[
        "strata",
        "master",
        "--enable-ha",
        "--noenable-offload",
        "--enable-snapshot=false",
        "--eviction-ratio",
        "0.1",
        "--v=1",
        "--rpc-port",
        "5",
    ]);
    let (rest, ignored) = strip(args, &implemented(&["--rpc-port"])).unwrap();
    assert_eq!(rest, os(&["strata", "master", "--rpc-port", "5"]));
    assert_eq!(
        ignored,
        vec![
            ig("--enable-ha", &[]),
            ig("--noenable-offload", &[]),
            ig("--enable-snapshot", &["false"]),
            ig("--eviction-ratio", &["0.1"]),
            ig("--v", &["1"]),
        ]
    );
    // `--nofoo` only for gflags bools.
    let args = os(&["strata", "master", "--noeviction-ratio"]);
    assert_eq!(strip(args.clone(), &implemented(&[])).unwrap().0, args);
}
