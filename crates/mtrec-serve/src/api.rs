//! The HTTP side: routes, request and response bodies, and their checks. A handler never runs
//! torch: it checks the request, queues it for the model thread ([`crate::engine`]) without
//! blocking (a full queue is a 503), and awaits the answer.
use crate::engine::{HistoryUse, TokenizedNews, Work};
use crate::error::RequestError;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mtrec_prep::tokenize::TitleTokenizer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;

/// What a request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `data.history`: the clicks a user vector is computed from (the last ones).
    pub history: usize,
    pub max_candidates: usize,
    pub max_k: usize,
    /// News per `/v1/news` request.
    pub max_news: usize,
    pub max_body_bytes: usize,
}

/// Whether the catalogue is built, and its size.
#[derive(Debug, Default)]
pub struct Status {
    pub ready: AtomicBool,
    pub news: AtomicUsize,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub queue: SyncSender<(Instant, Work)>,
    pub status: Arc<Status>,
    pub limits: Arc<Limits>,
    /// The shards' title tokenizer (prep's), for `/v1/news`.
    pub tokenizer: Arc<TitleTokenizer>,
    /// Category name -> id of the shards' vocabulary.
    pub categories: Arc<HashMap<String, i64>>,
    /// The model's news vectors use the category (AMF): `/v1/news` must give one.
    pub category_required: bool,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/v1/rank", post(rank))
        .route("/v1/recommend", post(recommend))
        .route("/v1/news", post(add_news))
        .route("/v1/users", post(user))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            RequestError {
                status: StatusCode::NOT_FOUND,
                field: String::new(),
                message: "no such endpoint".into(),
            }
        })
        .with_state(state)
        .layer(CatchPanicLayer::custom(|panic: Box<dyn std::any::Any + Send>| {
            let message = crate::engine::panic_message(&*panic);
            tracing::error!("a request handler panicked: {message}");
            RequestError::internal(format!("internal error: {message}")).into_response()
        }))
        .layer(middleware::from_fn_with_state(metrics, track))
}

/// Counts and times every request by endpoint (unknown paths as one) and status.
async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    const ENDPOINTS: [&str; 7] =
        ["/v1/rank", "/v1/recommend", "/v1/news", "/v1/users", "/healthz", "/readyz", "/metrics"];
    let path = request.uri().path();
    let endpoint = ENDPOINTS.iter().find(|&&e| e == path).copied().unwrap_or("other");
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.request(endpoint, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// A JSON body read within the size limit; a malformed one is a 400 naming the field where
/// parsing stopped, an unknown field included.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = RequestError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, RequestError> {
        let limit = state.limits.max_body_bytes;
        let too_large = || RequestError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            field: String::new(),
            message: format!("the body is over the {limit}-byte limit (--max-body-bytes)"),
        };
        let declared =
            request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        if declared.is_some_and(|n: usize| n > limit) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(request.into_body(), limit).await.map_err(|_| too_large())?;
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut json).map(JsonBody).map_err(parse_error)
    }
}

/// A body that does not parse as its type: a 400 naming the field where parsing stopped.
fn parse_error(error: serde_path_to_error::Error<serde_json::Error>) -> RequestError {
    let field = error.path().to_string();
    RequestError::invalid(if field == "." { String::new() } else { field }, error.into_inner().to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    pub history: Vec<String>,
    pub candidates: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    pub history: Vec<String>,
    pub k: usize,
    #[serde(default = "yes")]
    pub exclude_history: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub history: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewsItem {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub category: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Scored {
    pub id: String,
    pub score: f32,
}

/// The history a response was computed from.
#[derive(Debug, Serialize)]
pub struct HistoryReport {
    /// Clicks given.
    pub given: usize,
    /// The last ones used (`data.history` at most, as in training).
    pub used: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl From<HistoryUse> for HistoryReport {
    fn from(h: HistoryUse) -> Self {
        let note = (h.used < h.given).then(|| {
            format!("{} clicks given: the last {} used (data.history), as in training", h.given, h.used)
        });
        HistoryReport { given: h.given, used: h.used, note }
    }
}

#[derive(Debug, Serialize)]
pub struct RankResponse {
    /// The candidates, best first (equal scores in listed order).
    pub ranked: Vec<Scored>,
    /// Each candidate's 1-based rank, in listed order (as `predict`'s submission lines).
    pub ranks: Vec<usize>,
    pub history: HistoryReport,
}

#[derive(Debug, Serialize)]
pub struct RecommendResponse {
    pub items: Vec<Scored>,
    pub history: HistoryReport,
}

#[derive(Debug, Serialize)]
pub struct UserResponse {
    pub vector: Vec<f32>,
    pub history: HistoryReport,
}

#[derive(Debug, Serialize)]
pub struct NewsResponse {
    pub added: usize,
    pub replaced: usize,
    /// News in the catalogue afterwards.
    pub news: usize,
}

impl AppState {
    /// Queues `work` for the model thread and awaits its answer.
    async fn ask<T>(&self, make: impl FnOnce(crate::engine::Reply<T>) -> Work) -> Result<T, RequestError> {
        if !self.status.ready.load(Ordering::Acquire) {
            return Err(RequestError::unavailable("not ready: the news table is being built (see /readyz)"));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self.queue.try_send((Instant::now(), make(reply))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(RequestError::unavailable("overloaded: the model queue is full; retry later"));
            }
            Err(TrySendError::Disconnected(_)) => return Err(RequestError::unavailable("stopping")),
        }
        answer.await.map_err(|_| RequestError::internal("the model failed on the batch of this request"))?
    }
}

/// A user vector needs at least one click.
fn check_history(history: &[String]) -> Result<(), RequestError> {
    if history.is_empty() {
        return Err(RequestError::invalid("history", "empty: a user vector needs at least one click"));
    }
    Ok(())
}

async fn rank(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RankRequest>,
) -> Result<Json<RankResponse>, RequestError> {
    check_history(&request.history)?;
    let max = state.limits.max_candidates;
    if request.candidates.is_empty() || request.candidates.len() > max {
        let n = request.candidates.len();
        return Err(RequestError::invalid(
            "candidates",
            format!("{n} given: between 1 and {max} (--max-candidates)"),
        ));
    }
    let candidates = request.candidates.clone();
    let ranked = state
        .ask(|reply| Work::Rank { history: request.history, candidates: request.candidates, reply })
        .await?;
    // `predict`'s order: descending score, equal scores in listed order.
    let order = mtrec_train::metrics::ranking(0, &ranked.scores)
        .map_err(|e| RequestError::internal(format!("scores: {e}")))?;
    let mut ranks = vec![0; order.len()];
    order.iter().enumerate().for_each(|(rank, &i)| ranks[i] = rank + 1);
    let ranked_list =
        order.into_iter().map(|i| Scored { id: candidates[i].clone(), score: ranked.scores[i] }).collect();
    Ok(Json(RankResponse { ranked: ranked_list, ranks, history: ranked.history.into() }))
}

async fn recommend(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RecommendRequest>,
) -> Result<Json<RecommendResponse>, RequestError> {
    check_history(&request.history)?;
    let max = state.limits.max_k;
    if request.k == 0 || request.k > max {
        return Err(RequestError::invalid("k", format!("{}: between 1 and {max} (--max-k)", request.k)));
    }
    let (k, exclude_history) = (request.k, request.exclude_history);
    let answer =
        state.ask(|reply| Work::Recommend { history: request.history, k, exclude_history, reply }).await?;
    let items = answer.items.into_iter().map(|(id, score)| Scored { id, score }).collect();
    Ok(Json(RecommendResponse { items, history: answer.history.into() }))
}

async fn user(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<UserRequest>,
) -> Result<Json<UserResponse>, RequestError> {
    check_history(&request.history)?;
    let answer = state.ask(|reply| Work::User { history: request.history, reply }).await?;
    Ok(Json(UserResponse { vector: answer.vector, history: answer.history.into() }))
}

/// The body of `/v1/news`: one news item, or a list of them; a bad one named by its place.
fn news_items(body: serde_json::Value) -> Result<(Vec<NewsItem>, bool), RequestError> {
    let list = body.is_array();
    let parsed = if list {
        serde_path_to_error::deserialize(body)
    } else {
        serde_path_to_error::deserialize(body).map(|item: NewsItem| vec![item])
    };
    parsed.map(|items| (items, list)).map_err(parse_error)
}

async fn add_news(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<NewsResponse>, RequestError> {
    let (items, list) = news_items(body)?;
    let max = state.limits.max_news;
    if items.is_empty() || items.len() > max {
        return Err(RequestError::invalid(
            "",
            format!("{} news given: between 1 and {max} per request", items.len()),
        ));
    }
    let field = |i: usize, name: &str| if list { format!("[{i}].{name}") } else { name.to_string() };
    let mut tokenized = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if item.id.is_empty() {
            return Err(RequestError::invalid(field(i, "id"), "empty"));
        }
        if item.title.trim().is_empty() {
            return Err(RequestError::invalid(field(i, "title"), "empty"));
        }
        let category = match &item.category {
            Some(name) => *state.categories.get(name).ok_or_else(|| {
                RequestError::invalid(
                    field(i, "category"),
                    format!("{name:?} is not a category of the training data"),
                )
            })?,
            None if state.category_required => {
                return Err(RequestError::invalid(
                    field(i, "category"),
                    "required: this model's news vectors use the category (model.amf)",
                ));
            }
            None => 0,
        };
        let tokens = state
            .tokenizer
            .encode(&item.title)
            .map_err(|e| RequestError::invalid(field(i, "title"), format!("{e:#}")))?;
        tokenized.push(TokenizedNews { id: item.id, input_ids: tokens.ids, category });
    }
    let added = state.ask(|reply| Work::AddNews { items: tokenized, reply }).await?;
    // The catalogue only grows: concurrent additions answered out of order keep the largest count.
    let news = state.status.news.fetch_max(added.news, Ordering::AcqRel).max(added.news);
    state.metrics.set_news(news);
    Ok(Json(NewsResponse { added: added.added, replaced: added.replaced, news: added.news }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let news = state.status.news.load(Ordering::Acquire);
    if state.status.ready.load(Ordering::Acquire) {
        (StatusCode::OK, Json(serde_json::json!({"ready": true, "news": news}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"ready": false}))).into_response()
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut response = Response::new(Body::from(state.metrics.encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
