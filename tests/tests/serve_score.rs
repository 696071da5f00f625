//! `/v1/score` (SGLang's decoder-only scoring) on a real `strata serve` (CPU): each item's scores
//! are the probabilities of the label tokens after `query + item`, the same numbers `/generate`
//! reports as the first output position's `token_ids_logprob`; over the whole vocabulary they sum
//! to 1; `apply_softmax` renormalises over the labels; `item_first` and token-id inputs build the
//! prompts SGLang builds; errors are 400s and the server keeps serving.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{MadeModel, Server};

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v["scores"]
        .as_array()
        .unwrap_or_else(|| panic!("no scores: {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// exp of the label tokens' log-probabilities at the first output position of `/generate`.
async fn reference(s: &Server, prompt: Value, labels: &[u32]) -> Vec<f64> {
    let key = if prompt.is_string() {
        "text"
    } else {
        "input_ids"
    };
    let (st, v) = s
        .post(
            "/generate",
            &json!({key: prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 1},
                "return_logprob": true, "token_ids_logprob": labels}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let pos = &v["meta_info"]["output_token_ids_logprobs"][0];
    labels
        .iter()
        .map(|&t| {
            let e = pos
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e[1] == t)
                .unwrap_or_else(|| panic!("label {t} missing in {pos}"));
            e[0].as_f64().unwrap().exp()
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{what}: {a:?} vs {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scores_are_the_label_probabilities_after_query_and_item() {
    let m = MadeModel::new("llama", "tiny");
    let s = Server::start(m.path(), &[]);
    let vocab = m.dims().0 as u32;
    let labels = [5u32, 17, 42];
    let query = "Is this relevant? ";
    let items = [
        "yes it is",
        "no",
        "a much longer item about something else entirely",
    ];
    let (st, v) = s
        .post(
            "/v1/score",
            &json!({"query": query, "items": items, "label_token_ids": labels}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "scoring");
    let got = rows(&v);
    assert_eq!(got.len(), items.len());
    for (item, row) in items.iter().zip(&got) {
        let want = reference(&s, json!(format!("{query}{item}")), &labels).await;
        assert_close(row, &want, 1e-6, item);
    }
    // apply_softmax: the same ratios, summing to 1 per item.
    let (_, v) = s
        .post(
            "/v1/score",
            &json!({"query": query, "items": items, "label_token_ids": labels,
                "apply_softmax": true}),
        )
        .await;
    for (soft, raw) in rows(&v).iter().zip(&got) {
        let sum: f64 = raw.iter().sum();
        let want: Vec<f64> = raw.iter().map(|x| x / sum).collect();
        assert_close(soft, &want, 1e-6, "softmax");
    }
    // Over the whole vocabulary the scores are a distribution.
    let all: Vec<u32> = (0..vocab).collect();
    let (st, v) = s
        .post(
            "/v1/score",
            &json!({"query": query, "items": [items[0]], "label_token_ids": all}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let total: f64 = rows(&v)[0].iter().sum();
    assert!(
        (total - 1.0).abs() < 1e-4,
        "sum over the vocabulary {total}"
    );
    // item_first puts the item before the query.
    let (_, v) = s
        .post(
            "/v1/score",
            &json!({"query": query, "items": [items[1]], "label_token_ids": labels,
                "item_first": true}),
        )
        .await;
    let want = reference(&s, json!(format!("{}{query}", items[1])), &labels).await;
    assert_close(&rows(&v)[0], &want, 1e-6, "item_first");
    // Token ids: the lists are joined as they are.
    let (q, i) = (vec![1u32, 9, 33, 7], vec![12u32, 60]);
    let (st, v) = s
        .post(
            "/v1/score",
            &json!({"query": q, "items": [i.clone()], "label_token_ids": labels}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let joined: Vec<u32> = q.iter().chain(&i).copied().collect();
    let want = reference(&s, json!(joined), &labels).await;
    assert_close(&rows(&v)[0], &want, 1e-6, "token ids");
    // No items: no scores.
    let (st, v) = s
        .post(
            "/v1/score",
            &json!({"query": query, "items": [], "label_token_ids": labels}),
        )
        .await;
    assert_eq!((st, v["scores"].clone()), (200, json!([])));
    for body in [
        json!({"query": query, "items": items}),
        json!({"query": query, "items": items, "label_token_ids": []}),
        json!({"query": query, "items": items, "label_token_ids": [vocab]}),
        json!({"query": query, "items": items, "label_token_ids": [1, -1]}),
        json!({"query": query, "items": [[1, 2]], "label_token_ids": labels}),
        json!({"query": query, "label_token_ids": labels}),
        json!({"query": query, "items": items, "label_token_ids": labels, "apply_softmax": "yes"}),
    ] {
        let (st, v) = s.post("/v1/score", &body).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // Still serving, same numbers.
    let (_, v) = s
        .post(
            "/v1/score",
            &json!({"query": query, "items": items, "label_token_ids": labels}),
        )
        .await;
    assert_close(&rows(&v)[0], &got[0], 1e-6, "after errors");
}
