//! SGLang's sessions: `POST /open_session {"capacity_of_str_len", "session_id"?}` answers the
//! session's id (a fresh hex id unless one is given; an id already open is a 400), `POST
//! /close_session {"session_id"}` forgets it, and a `/generate` request with `session_params
//! {"id", "rid", "offset", "replace", "drop_previous_output"}` continues an earlier request of the
//! session: its prompt is that request's prompt and output (only the prompt with
//! `drop_previous_output`; cut to `offset` tokens when `offset` is not 0) followed by the new input
//! (its BOS dropped). Without `rid` the request starts a new branch of the session; `replace`
//! replaces `rid`'s continuations (running ones are aborted; without `rid`, every request of the
//! session). Continuing an unknown or unfinished request, or a session that is not open, is a
//! 400. Requests form a tree per session, as in SGLang's session controller; the KV of the
//! shared history comes from the radix cache, so nothing is pinned: a session costs a few token
//! lists of host memory.

use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

/// `session_params` of a `/generate` request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SessionParams {
    pub id: Option<String>,
    pub rid: Option<String>,
    pub offset: Option<i64>,
    pub replace: Option<bool>,
    pub drop_previous_output: Option<bool>,
}

/// One request of a session.
#[derive(Debug)]
struct Node {
    input: Vec<u32>,
    /// The output tokens (up to `max_new_tokens`) once finished.
    output: Option<Vec<u32>>,
    children: Vec<String>,
}

#[derive(Debug, Default)]
struct Session {
    nodes: HashMap<String, Node>,
}

impl Session {
    /// Removes `rid`'s continuations (all of their descendants); returns their ids.
    fn clear_children(&mut self, rid: &str) -> Vec<String> {
        let mut gone = Vec::new();
        let mut todo = self
            .nodes
            .get_mut(rid)
            .map(|n| std::mem::take(&mut n.children))
            .unwrap_or_default();
        while let Some(r) = todo.pop() {
            if let Some(n) = self.nodes.remove(&r) {
                todo.extend(n.children);
                gone.push(r);
            }
        }
        gone
    }
}

/// The open sessions of a server.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    /// Opens a session (a fresh id unless `id` is given); an open id is refused.
    pub fn open(&self, id: Option<String>) -> Result<String, ApiError> {
        let id = id.unwrap_or_else(super::driver::new_rid);
        let mut map = self.0.lock().expect("sessions");
        if map.contains_key(&id) {
            return Err(ApiError::bad_request(
                "Failed to open the session. Check if a session with the same id is still open.",
            ));
        }
        map.insert(id.clone(), Session::default());
        Ok(id)
    }

    /// Closes a session; false when it was not open.
    pub fn close(&self, id: &str) -> bool {
        self.0.lock().expect("sessions").remove(id).is_some()
    }

    /// Registers request `rid` of session `p.id` whose own input is `input`: returns the whole
    /// prompt to run and the running requests it replaces (to abort).
    pub fn start(
        &self,
        p: &SessionParams,
        rid: &str,
        mut input: Vec<u32>,
        bos: Option<u32>,
    ) -> Result<(Vec<u32>, Vec<String>), ApiError> {
        let id = p.id.as_deref().unwrap_or_default();
        let mut map = self.0.lock().expect("sessions");
        let s = map.get_mut(id).ok_or_else(|| {
            ApiError::bad_request(format!("Invalid request: session id {id} does not exist"))
        })?;
        if s.nodes.contains_key(rid) {
            return Err(ApiError::bad_request(format!(
                "Request id {rid} is already in session {id}."
            )));
        }
        let mut aborted = Vec::new();
        let parent = match (&p.rid, p.replace.unwrap_or(false)) {
            (None, true) => {
                aborted = s.nodes.keys().cloned().collect();
                s.nodes.clear();
                None
            }
            (None, false) => None,
            (Some(r), replace) => {
                let Some(n) = s.nodes.get(r) else {
                    return Err(ApiError::bad_request(format!(
                        "Invalid request session id: request {r} is not in session {id}."
                    )));
                };
                if n.output.is_none() && !replace {
                    return Err(ApiError::bad_request(format!(
                        "Request {r} of session {id} has not finished; a request can only \
                         continue a finished one."
                    )));
                }
                if replace {
                    // SGLang's: a running `rid` is stopped (the new request goes on from what it
                    // produced so far) and its continuations are dropped.
                    if n.output.is_none() {
                        aborted.push(r.clone());
                    }
                    aborted.extend(s.clear_children(r));
                }
                Some(r.clone())
            }
        };
        if let Some(r) = &parent {
            let n = &s.nodes[r];
            if bos.is_some() && input.first().copied() == bos {
                input.remove(0);
            }
            let mut ids = n.input.clone();
            if !p.drop_previous_output.unwrap_or(false) {
                ids.extend(n.output.iter().flatten());
            }
            if let Some(off) = p.offset.filter(|&o| o != 0) {
                // Python's slice: a negative offset counts from the end.
                let k = if off < 0 {
                    ids.len().saturating_sub(off.unsigned_abs() as usize)
                } else {
                    (off as usize).min(ids.len())
                };
                ids.truncate(k);
            }
            ids.extend(input);
            input = ids;
        }
        s.nodes.insert(
            rid.to_string(),
            Node {
                input: input.clone(),
                output: None,
                children: Vec::new(),
            },
        );
        if let Some(r) = parent {
            if let Some(n) = s.nodes.get_mut(&r) {
                n.children.push(rid.to_string());
            }
        }
        Ok((input, aborted))
    }

    /// Removes request `rid` of session `id` (it never ran).
    pub fn forget(&self, id: &str, rid: &str) {
        let mut map = self.0.lock().expect("sessions");
        if let Some(s) = map.get_mut(id) {
            s.nodes.remove(rid);
            for n in s.nodes.values_mut() {
                n.children.retain(|c| c != rid);
            }
        }
    }

    /// Records the output of request `rid` of session `id` (a closed session or a replaced
    /// request records nothing).
    pub fn finish(&self, id: &str, rid: &str, output: &[u32]) {
        let mut map = self.0.lock().expect("sessions");
        if let Some(n) = map.get_mut(id).and_then(|s| s.nodes.get_mut(rid)) {
            n.output = Some(output.to_vec());
        }
    }
}

/// A `/generate` request's place in a session: (session id, request id).
pub type Member = (String, String);

/// Resolves a `/generate` request's `session_params` (none, or no `id`: not in a session): its
/// one prompt becomes the session's history plus the new input, its rid the one it is known by
/// in the session (a fresh one unless given), and the continuations it replaces are aborted.
/// `many` (a batch or `n > 1`) cannot be in a session.
pub fn begin(
    st: &AppState,
    params: Option<Value>,
    many: bool,
    prompts: &mut [Vec<u32>],
    rids: &mut [Option<String>],
) -> Result<Option<Member>, ApiError> {
    let Some(v) = params.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let sp: SessionParams = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("Invalid session_params: {e}")))?;
    let Some(id) = sp.id.clone() else {
        return Ok(None);
    };
    if many {
        return Err(ApiError::bad_request(
            "session_params needs a single prompt and n = 1.",
        ));
    }
    let rid = rids[0].take().unwrap_or_else(super::driver::new_rid);
    let bos = st.tokenizer.bos_token.as_deref();
    let bos = bos.and_then(|b| st.tokenizer.token_to_id(b));
    let input = std::mem::take(&mut prompts[0]);
    let (ids, replaced) = st.sessions.start(&sp, &rid, input, bos)?;
    for r in replaced {
        st.scheduler.abort(&r);
    }
    prompts[0] = ids;
    rids[0] = Some(rid.clone());
    Ok(Some((id, rid)))
}

/// After submission: a session member's output joins the session when it ends (streamed or
/// not); a member that was refused leaves the session.
pub fn submitted(
    st: &AppState,
    member: Option<Member>,
    drivers: Result<Vec<super::driver::Driver>, ApiError>,
) -> Result<Vec<super::driver::Driver>, ApiError> {
    let Some((id, rid)) = member else {
        return drivers;
    };
    match drivers {
        Ok(mut d) => {
            let sessions = st.sessions.clone();
            d[0].on_finish = Some(Box::new(move |out: &[u32]| sessions.finish(&id, &rid, out)));
            Ok(d)
        }
        Err(e) => {
            st.sessions.forget(&id, &rid);
            Err(e)
        }
    }
}

#[derive(Debug, Deserialize)]
struct OpenWire {
    session_id: Option<String>,
    #[serde(flatten)]
    _rest: serde_json::Map<String, Value>,
}

/// `POST /open_session`: the session's id, as a JSON string.
pub async fn open_session(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let w: OpenWire = super::error::parse_body(&body)?;
    Ok(Json(Value::String(st.sessions.open(w.session_id)?)))
}

#[derive(Debug, Deserialize)]
struct CloseWire {
    session_id: String,
}

/// `POST /close_session`: 200 (an unknown id too, as SGLang, with a warning in the log).
pub async fn close_session(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<axum::http::StatusCode, ApiError> {
    let w: CloseWire = super::error::parse_body(&body)?;
    if !st.sessions.close(&w.session_id) {
        tracing::warn!(session = %w.session_id, "close_session: no such session is open");
    }
    Ok(axum::http::StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(id: &str, rid: Option<&str>) -> SessionParams {
        SessionParams {
            id: Some(id.into()),
            rid: rid.map(String::from),
            ..SessionParams::default()
        }
    }

    #[test]
    fn a_session_continues_prompt_and_output_and_branches() {
        let s = Sessions::default();
        let id = s.open(Some("s".into())).unwrap();
        assert!(s.open(Some("s".into())).is_err());
        let (ids, _) = s
            .start(&sp(&id, None), "a", vec![1, 10, 11], Some(1))
            .unwrap();
        assert_eq!(ids, [1, 10, 11]);
        // Not finished yet: cannot be continued.
        assert!(s
            .start(&sp(&id, Some("a")), "b", vec![1, 12], Some(1))
            .is_err());
        s.finish(&id, "a", &[20, 21]);
        let (ids, _) = s
            .start(&sp(&id, Some("a")), "b", vec![1, 12], Some(1))
            .unwrap();
        assert_eq!(ids, [1, 10, 11, 20, 21, 12]);
        s.finish(&id, "b", &[30]);
        // drop_previous_output and offset.
        let mut p = sp(&id, Some("a"));
        p.drop_previous_output = Some(true);
        assert_eq!(
            s.start(&p, "c", vec![13], Some(1)).unwrap().0,
            [1, 10, 11, 13]
        );
        let mut p = sp(&id, Some("a"));
        p.offset = Some(2);
        assert_eq!(s.start(&p, "d", vec![14], Some(1)).unwrap().0, [1, 10, 14]);
        p.offset = Some(-1);
        assert_eq!(
            s.start(&p, "e", vec![15], Some(1)).unwrap().0,
            [1, 10, 11, 20, 15]
        );
        // Replacing a's continuations drops b, c, d, e (and would abort the running ones).
        let mut p = sp(&id, Some("a"));
        p.replace = Some(true);
        let (_, mut gone) = s.start(&p, "f", vec![16], Some(1)).unwrap();
        gone.sort();
        assert_eq!(gone, ["b", "c", "d", "e"]);
        // Replacing a request still running stops it too.
        s.start(&sp(&id, Some("a")), "r", vec![18], Some(1))
            .unwrap();
        let mut p = sp(&id, Some("r"));
        p.replace = Some(true);
        assert_eq!(s.start(&p, "r2", vec![19], Some(1)).unwrap().1, ["r"]);
        assert!(s
            .start(&sp(&id, Some("b")), "g", vec![17], Some(1))
            .is_err());
        // Unknown session, unknown rid, reused rid; closing.
        assert!(s.start(&sp("nope", None), "h", vec![1], Some(1)).is_err());
        assert!(s
            .start(&sp(&id, Some("zz")), "h", vec![1], Some(1))
            .is_err());
        assert!(s.start(&sp(&id, None), "a", vec![1], Some(1)).is_err());
        assert!(s.close(&id));
        assert!(!s.close(&id));
        assert!(s.start(&sp(&id, None), "i", vec![1], Some(1)).is_err());
    }
}
