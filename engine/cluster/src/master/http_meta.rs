//! The Mooncake-style HTTP metadata server (`GET/PUT/DELETE /metadata?key=...`), used by transfer
//! engines to publish their endpoints. Semantics follow Mooncake's: 404 for a missing key, and a second
//! PUT of an `rpc_meta` key with a different body is refused (two processes claiming one name).
//! Entries persist with the rest of the master's state.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;

use super::state::Change;
use super::{http_authorized, Master};

type Params = Query<HashMap<String, String>>;
type Reply = (StatusCode, String);

pub fn app(master: Arc<Master>) -> Router {
    Router::new()
        .route("/metadata", get(get_meta).put(put_meta).delete(del_meta))
        .with_state(master)
}

fn key(m: &Master, headers: &HeaderMap, q: &Params) -> Result<String, Reply> {
    if !http_authorized(&m.cfg.auth_token, headers) {
        return Err((StatusCode::UNAUTHORIZED, "unauthorized".into()));
    }
    match q.get("key") {
        Some(k) if !k.is_empty() => Ok(k.clone()),
        _ => Err((StatusCode::BAD_REQUEST, "missing key parameter".into())),
    }
}

async fn get_meta(State(m): State<Arc<Master>>, h: HeaderMap, q: Params) -> Reply {
    let k = match key(&m, &h, &q) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match m.state.lock().metadata.get(&k) {
        Some(v) => (StatusCode::OK, v.clone()),
        None => (StatusCode::NOT_FOUND, "metadata not found".into()),
    }
}

async fn put_meta(State(m): State<Arc<Master>>, h: HeaderMap, q: Params, body: String) -> Reply {
    let k = match key(&m, &h, &q) {
        Ok(k) => k,
        Err(r) => return r,
    };
    m.update(|s| match s.metadata.get(&k) {
        Some(old) if k.contains("rpc_meta") && *old != body => (
            (
                StatusCode::BAD_REQUEST,
                "duplicate rpc_meta key not allowed".into(),
            ),
            Change::None,
        ),
        Some(old) if *old == body => ((StatusCode::OK, "metadata updated".into()), Change::None),
        _ => {
            s.metadata.insert(k.clone(), body.clone());
            ((StatusCode::OK, "metadata updated".into()), Change::Persist)
        }
    })
}

async fn del_meta(State(m): State<Arc<Master>>, h: HeaderMap, q: Params) -> Reply {
    let k = match key(&m, &h, &q) {
        Ok(k) => k,
        Err(r) => return r,
    };
    m.update(|s| match s.metadata.remove(&k) {
        Some(_) => ((StatusCode::OK, "metadata deleted".into()), Change::Persist),
        None => (
            (StatusCode::NOT_FOUND, "metadata not found".into()),
            Change::None,
        ),
    })
}
