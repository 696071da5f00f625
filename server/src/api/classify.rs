//! Sequence-classification and reward checkpoints (`*ForSequenceClassification`): their head
//! `score.weight` applied to the last token's final hidden state (SGLang's `LAST` pooling without
//! normalisation), the answer the embedding routes give for such a model (`embed.rs`), and
//! `POST /v1/classify` / `/classify`, which turn the scores into probabilities and a label.

use super::embed::{body, embed_all, prompt_tokens, prompts};
use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// A sequence-classification head (`score.weight`, `[labels, hidden]`): the answer of a
/// classification checkpoint is its class scores of the last token's final hidden state
/// (SGLang's `LAST` pooling without normalisation, then the head), which `/encode` and
/// `/v1/embeddings` return as the embedding (a reward model's one score) and `/v1/classify`
/// turns into a label and probabilities.
pub struct Classifier {
    weight: Vec<f32>,
    pub labels: Vec<String>,
}

impl Classifier {
    /// Reads `score.weight` from the checkpoint in `dir`.
    pub fn load(
        dir: &std::path::Path,
        labels: Vec<String>,
        hidden: usize,
    ) -> Result<Self, crate::model::ModelError> {
        let bad = |msg: String| crate::model::ModelError::bad(dir, msg);
        let t = crate::model::weights::read_tensor(dir, "score.weight")?.ok_or_else(|| {
            bad("a sequence-classification checkpoint without `score.weight`".into())
        })?;
        if t.shape != [labels.len(), hidden] {
            return Err(bad(format!(
                "`score.weight` has shape {:?}; {} labels and hidden size {hidden} imply [{}, {hidden}]",
                t.shape,
                labels.len(),
                labels.len()
            )));
        }
        Ok(Classifier {
            weight: t.data,
            labels,
        })
    }

    /// The class scores of a final hidden state.
    pub fn scores(&self, hidden: &[f32]) -> Vec<f32> {
        self.weight
            .chunks(hidden.len())
            .map(|w| {
                let s: f64 = w
                    .iter()
                    .zip(hidden)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                s as f32
            })
            .collect()
    }
}

/// `POST /v1/classify` and `POST /classify` (a sequence-classification checkpoint): per input
/// the softmax of its class scores and the label of the largest, SGLang's response shape.
pub async fn classify(State(st): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let v = body(&bytes)?;
    let Some(c) = st.classifier.clone() else {
        return Err(ApiError::bad_request(
            "This model is not a classification model: /v1/classify needs a \
             *ForSequenceClassification checkpoint (id2label or num_labels in config.json).",
        ));
    };
    let input = v
        .get("input")
        .or_else(|| v.get("text"))
        .unwrap_or(&Value::Null);
    let prompts = prompts(&st, input, "input")?;
    let done = embed_all(&st, prompts, &v, None).await?;
    let tokens = prompt_tokens(&done);
    let data: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let probs = super::score::softmax(&e.vector);
            let best = (0..probs.len())
                .max_by(|&a, &b| e.vector[a].total_cmp(&e.vector[b]))
                .unwrap_or(0);
            json!({"index": i, "label": c.labels[best], "probs": probs,
                "num_classes": probs.len()})
        })
        .collect();
    Ok(Json(json!({
        "id": format!("classify-{}", super::driver::new_rid()),
        "object": "list",
        "created": super::openai::now_secs(),
        "model": st.info.served_model_name,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
            "prompt_tokens_details": null},
    }))
    .into_response())
}
