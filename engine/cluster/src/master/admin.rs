//! Metrics and admin endpoints (port 9003 by default): `/metrics` (Prometheus text format),
//! `/metrics/summary` (human-readable), `/get_all_segments`, `/query_key?key=` (where placement puts a
//! key) and `/health`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;

use super::{http_authorized, Master};
use crate::membership::placement;

type Reply = (StatusCode, String);

pub fn app(master: Arc<Master>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/summary", get(summary))
        .route("/get_all_segments", get(segments))
        .route("/query_key", get(query_key))
        .route("/health", get(|| async { "OK" }))
        .with_state(master)
}

fn deny(m: &Master, h: &HeaderMap) -> Option<Reply> {
    (!http_authorized(&m.cfg.auth_token, h))
        .then(|| (StatusCode::UNAUTHORIZED, "unauthorized".into()))
}

async fn metrics(State(m): State<Arc<Master>>, h: HeaderMap) -> Reply {
    if let Some(r) = deny(&m, &h) {
        return r;
    }
    let st = m.state.lock();
    let alive = st.members.values().filter(|x| x.info.alive).count();
    let mut o = String::new();
    let mut g = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    g("strata_master_epoch", "Membership epoch.", st.epoch);
    g(
        "strata_master_members_alive",
        "Alive store nodes.",
        alive as u64,
    );
    g(
        "strata_master_members_dead",
        "Known dead store nodes.",
        (st.members.len() - alive) as u64,
    );
    let sum = |f: fn(&super::state::Member) -> u64| {
        st.members.values().filter(|x| x.info.alive).map(f).sum()
    };
    g(
        "strata_master_capacity_bytes",
        "Device capacity of alive nodes.",
        sum(|x| x.info.capacity),
    );
    g(
        "strata_master_memory_bytes",
        "DRAM of alive nodes.",
        sum(|x| x.info.memory),
    );
    g(
        "strata_master_used_bytes",
        "Live bytes on alive nodes.",
        sum(|x| x.used_bytes),
    );
    g(
        "strata_master_keys",
        "Keys on alive nodes.",
        sum(|x| x.keys),
    );
    g(
        "strata_master_metadata_keys",
        "HTTP metadata entries.",
        st.metadata.len() as u64,
    );
    let _ = writeln!(
        o,
        "# HELP strata_master_rpc_requests_total RPC requests served.\n# TYPE strata_master_rpc_requests_total counter\nstrata_master_rpc_requests_total {}",
        m.rpc_requests.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP strata_master_rpc_errors_total Connections closed for protocol or auth errors.\n# TYPE strata_master_rpc_errors_total counter\nstrata_master_rpc_errors_total {}",
        m.rpc_errors.load(Ordering::Relaxed)
    );
    (StatusCode::OK, o)
}

async fn summary(State(m): State<Arc<Master>>, h: HeaderMap) -> Reply {
    if let Some(r) = deny(&m, &h) {
        return r;
    }
    let st = m.state.lock();
    let mut o = format!("epoch {} | {} members\n", st.epoch, st.members.len());
    for x in st.members.values() {
        let _ = writeln!(
            o,
            "{} {} {} capacity={} memory={} used={} keys={}",
            x.info.id,
            x.info.addr,
            if x.info.alive { "alive" } else { "dead" },
            x.info.capacity,
            x.info.memory,
            x.used_bytes,
            x.keys
        );
    }
    (StatusCode::OK, o)
}

async fn segments(State(m): State<Arc<Master>>, h: HeaderMap) -> Reply {
    if let Some(r) = deny(&m, &h) {
        return r;
    }
    let members = m.state.lock().members();
    (
        StatusCode::OK,
        serde_json::to_string(&members.nodes).unwrap_or_default(),
    )
}

async fn query_key(
    State(m): State<Arc<Master>>,
    h: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Reply {
    if let Some(r) = deny(&m, &h) {
        return r;
    }
    let Some(key) = q.get("key") else {
        return (StatusCode::BAD_REQUEST, "missing key parameter".into());
    };
    let members = m.state.lock().members();
    let alive: Vec<_> = members.nodes.iter().filter(|n| n.alive).cloned().collect();
    let order = placement::rank(key.as_bytes(), &alive);
    let nodes: Vec<_> = order.iter().map(|&i| &alive[i]).collect();
    (
        StatusCode::OK,
        serde_json::to_string(&nodes).unwrap_or_default(),
    )
}
