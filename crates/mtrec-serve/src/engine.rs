//! The model thread: the only thread that touches torch. HTTP handlers queue [`Work`] and await
//! its reply; the thread takes what is queued as one batch ([`run_batches`]: up to `max_batch`
//! requests, waiting at most `max_wait` after the first of them was queued), answers every
//! request of it with one user-encoder call, one gather for the rankings and one matrix product
//! with top-k for the recommendations. A panic while answering a batch fails that batch's
//! requests (their reply channels close: 500) and the thread goes on with the next batch.
//!
//! Scores are computed as `predict` computes them ([`mtrec_train::eval::user_vectors`]: the
//! last `data.history` clicks, the user encoder without dropout; a candidate's score is the dot
//! product of its news vector with the user vector), so the service ranks an impression as the
//! submission file does.
use crate::catalogue::Catalogue;
use crate::error::RequestError;
use mtrec_data::read::{EvalImpression, NewsTable};
use mtrec_model::{Dropout, Heads, NewsRecModel};
use mtrec_train::device_batch::news_inputs;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// Where a request's answer goes.
pub type Reply<T> = tokio::sync::oneshot::Sender<Result<T, RequestError>>;

/// One request for the model thread; news are named by their ids.
pub enum Work {
    Rank { history: Vec<String>, candidates: Vec<String>, reply: Reply<Ranked> },
    Recommend { history: Vec<String>, k: usize, exclude_history: bool, reply: Reply<Recommended> },
    User { history: Vec<String>, reply: Reply<UserVector> },
    AddNews { items: Vec<TokenizedNews>, reply: Reply<Added> },
}

/// How much of a history the user encoder saw: the last `used` of `given` clicks.
#[derive(Debug, Clone, Copy)]
pub struct HistoryUse {
    pub given: usize,
    pub used: usize,
}

#[derive(Debug)]
pub struct Ranked {
    /// The candidates' scores, in their listed order.
    pub scores: Vec<f32>,
    pub history: HistoryUse,
}

#[derive(Debug)]
pub struct Recommended {
    /// `(news id, score)`, best first.
    pub items: Vec<(String, f32)>,
    pub history: HistoryUse,
}

#[derive(Debug)]
pub struct UserVector {
    pub vector: Vec<f32>,
    pub history: HistoryUse,
}

#[derive(Debug)]
pub struct Added {
    pub added: usize,
    pub replaced: usize,
    /// News in the catalogue afterwards.
    pub news: usize,
}

/// A news item to add, tokenized as `mtrec-prep` tokenizes titles.
#[derive(Debug, Clone)]
pub struct TokenizedNews {
    pub id: String,
    pub input_ids: Vec<i32>,
    pub category: i64,
}

/// How requests are gathered into one model call.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch: usize,
    /// The longest a request waits for others after it was queued.
    pub max_wait: Duration,
}

/// Takes batches from `queue` until every sender is gone: the first queued item and what else
/// is queued, up to `max_batch` items; while requests come concurrently (the previous batch had
/// more than one), also what arrives until `max_wait` after the first item was queued. One
/// client at a time is so answered at once, and concurrent ones share model calls. Each batch
/// goes to `process`; a panic in it is logged and the loop goes on. Returns the batches
/// processed.
pub fn run_batches<W>(
    queue: &Receiver<(Instant, W)>,
    policy: BatchPolicy,
    mut process: impl FnMut(Vec<W>),
) -> u64 {
    let (mut batches, mut concurrent) = (0, false);
    while let Ok((queued, first)) = queue.recv() {
        let deadline = if concurrent { queued + policy.max_wait } else { queued };
        let mut batch = vec![first];
        while batch.len() < policy.max_batch.max(1) {
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => queue.recv_timeout(left),
                _ => queue.try_recv().map_err(|_| RecvTimeoutError::Timeout),
            };
            match next {
                Ok((_, work)) => batch.push(work),
                Err(_) => break,
            }
        }
        batches += 1;
        concurrent = batch.len() > 1;
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| process(batch))) {
            tracing::error!("a batch failed and its requests got a 500: {}", panic_message(&*panic));
        }
    }
    batches
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// The model and its catalogue, on the model thread.
pub struct Engine {
    pub model: NewsRecModel,
    /// The variables of `model` (frozen: nothing trains here).
    pub weights: tch::nn::VarStore,
    pub catalogue: Catalogue,
    /// `data.history`: the clicks a user vector is computed from (the last ones).
    pub history: usize,
    /// Titles encoded per model call when news are added.
    pub news_batch: usize,
}

/// A query with its news ids resolved to catalogue rows.
struct Resolved {
    /// The clicks the user vector reads: the last `data.history`.
    history: Vec<i32>,
    /// Every click the request gave (what `exclude_history` excludes).
    clicked: Vec<i32>,
}

impl Engine {
    /// Answers one batch: news additions first (in their order), then every query.
    pub fn answer(&mut self, batch: Vec<Work>) {
        let mut queries = Vec::with_capacity(batch.len());
        for work in batch {
            match work {
                Work::AddNews { items, reply } => {
                    let _ = reply.send(self.add_news(&items));
                }
                query => queries.push(query),
            }
        }
        if !queries.is_empty() {
            self.answer_queries(queries);
        }
    }

    fn add_news(&mut self, items: &[TokenizedNews]) -> Result<Added, RequestError> {
        let ids: Vec<String> = items.iter().map(|n| n.id.clone()).collect();
        let mut table = NewsTable::with_padding();
        for item in items {
            table.news_id.push(item.id.clone());
            table.category.push(item.category);
            table.subcategory.push(0);
            table.ner_tags.push(vec![0; item.input_ids.len()]);
            table.input_ids.push(item.input_ids.clone());
            table.entities.push(Vec::new());
        }
        let device = self.catalogue.device();
        let nids: Vec<i32> = (1..table.len() as i32).collect();
        let vectors = tch::no_grad(|| {
            let parts: Vec<Tensor> = nids
                .chunks(self.news_batch.max(1))
                .map(|chunk| {
                    let inputs = news_inputs(&table, chunk, device, None);
                    self.model.encode_news(&inputs, Heads::None, &Dropout::Off).vectors
                })
                .collect();
            Tensor::cat(&parts, 0)
        });
        let added = self.catalogue.upsert(&ids, &vectors);
        Ok(Added { added, replaced: ids.len() - added, news: self.catalogue.news() })
    }

    fn resolve(&self, history: &[String]) -> Result<Resolved, RequestError> {
        let clicked = self.catalogue.rows_of("history", history)?;
        let kept = clicked[clicked.len().saturating_sub(self.history)..].to_vec();
        Ok(Resolved { history: kept, clicked })
    }

    fn answer_queries(&mut self, queries: Vec<Work>) {
        // Resolve every query's ids; a query naming an unknown news item is answered at once.
        let mut answerable = Vec::with_capacity(queries.len());
        for query in queries {
            let resolved = match &query {
                Work::Rank { history, candidates, .. } => self
                    .resolve(history)
                    .and_then(|r| Ok((r, self.catalogue.rows_of("candidates", candidates)?))),
                Work::Recommend { history, .. } | Work::User { history, .. } => {
                    self.resolve(history).map(|r| (r, Vec::new()))
                }
                Work::AddNews { .. } => unreachable!("additions are answered first"),
            };
            match resolved {
                Ok((resolved, candidates)) => answerable.push((query, resolved, candidates)),
                Err(error) => fail(query, error),
            }
        }
        if answerable.is_empty() {
            return;
        }
        let impressions: Vec<EvalImpression> = answerable
            .iter()
            .map(|(_, resolved, candidates)| EvalImpression {
                impression_id: 0,
                user: 0,
                time: 0,
                history: resolved.history.clone(),
                candidates: candidates.clone(),
                labels: None,
            })
            .collect();
        let table = self.catalogue.table();
        let device = table.device();
        let users = match mtrec_train::eval::user_vectors(
            &self.model,
            &table,
            &impressions,
            self.history,
            impressions.len(),
        ) {
            Ok(users) => users,
            Err(e) => {
                let message = format!("user encoder: {e}");
                answerable.into_iter().for_each(|(q, _, _)| fail(q, RequestError::internal(&message)));
                return;
            }
        };
        let position = |pick: fn(&Work) -> bool| -> Vec<i64> {
            (0..answerable.len() as i64).filter(|&i| pick(&answerable[i as usize].0)).collect()
        };
        let (ranks, recommends) =
            (position(|w| matches!(w, Work::Rank { .. })), position(|w| matches!(w, Work::Recommend { .. })));
        let index = |rows: &[i64]| Tensor::from_slice(rows).to_device(device);
        tch::no_grad(|| {
            // Rankings: every candidate of every ranking at once, dotted with its owner's vector.
            let rank_scores: Vec<f32> = if ranks.is_empty() {
                Vec::new()
            } else {
                let (mut rows, mut owners) = (Vec::new(), Vec::new());
                for &i in &ranks {
                    let candidates = &answerable[i as usize].2;
                    rows.extend(candidates.iter().map(|&r| r as i64));
                    owners.extend(std::iter::repeat_n(i, candidates.len()));
                }
                let candidates = table.index_select(0, &index(&rows));
                let owners = users.index_select(0, &index(&owners));
                let scores = (candidates * owners).sum_dim_intlist(-1, false, Kind::Float);
                Vec::try_from(scores.to_device(tch::Device::Cpu)).expect("f32 scores")
            };
            // Recommendations: one product with the whole catalogue, then the top k of each row.
            let recommended = (!recommends.is_empty()).then(|| self.top_k(&answerable, &recommends, &users));
            // User vectors come back to the host only when a request asks for one.
            let user_values: Vec<f32> = if answerable.iter().any(|(w, _, _)| matches!(w, Work::User { .. })) {
                Vec::try_from(users.to_device(tch::Device::Cpu).view([-1])).expect("f32 user vectors")
            } else {
                Vec::new()
            };
            let d = users.size()[1] as usize;
            let (mut rank_offset, mut recommend_index) = (0, 0);
            for (i, (query, resolved, candidates)) in answerable.into_iter().enumerate() {
                let history = HistoryUse { given: resolved.clicked.len(), used: resolved.history.len() };
                match query {
                    Work::Rank { reply, .. } => {
                        let scores = rank_scores[rank_offset..rank_offset + candidates.len()].to_vec();
                        rank_offset += candidates.len();
                        let _ = reply.send(Ok(Ranked { scores, history }));
                    }
                    Work::Recommend { reply, .. } => {
                        let items = recommended.as_ref().expect("top k computed")[recommend_index].clone();
                        recommend_index += 1;
                        let _ = reply.send(Ok(Recommended { items, history }));
                    }
                    Work::User { reply, .. } => {
                        let vector = user_values[i * d..(i + 1) * d].to_vec();
                        let _ = reply.send(Ok(UserVector { vector, history }));
                    }
                    Work::AddNews { .. } => unreachable!("additions are answered first"),
                }
            }
        });
    }

    /// The top `k` news of each recommendation (`positions` into `answerable`): scores against
    /// every row of the catalogue, the padding row and (with `exclude_history`) every click the
    /// request gave (not only the last `data.history` the user vector reads) set to minus
    /// infinity first.
    fn top_k(
        &self,
        answerable: &[(Work, Resolved, Vec<i32>)],
        positions: &[i64],
        users: &Tensor,
    ) -> Vec<Vec<(String, f32)>> {
        let table = self.catalogue.table();
        let device = table.device();
        let users = users.index_select(0, &Tensor::from_slice(positions).to_device(device));
        let scores = users.matmul(&table.tr());
        let (mut rows, mut cols) = (Vec::new(), Vec::new());
        let mut k_max = 1;
        for (r, &i) in positions.iter().enumerate() {
            let (work, resolved, _) = &answerable[i as usize];
            let Work::Recommend { k, exclude_history, .. } = work else { unreachable!("a recommendation") };
            k_max = k_max.max(*k);
            rows.push(r as i64);
            cols.push(0);
            if *exclude_history {
                rows.extend(std::iter::repeat_n(r as i64, resolved.clicked.len()));
                cols.extend(resolved.clicked.iter().map(|&h| h as i64));
            }
        }
        let masked = [
            Some(Tensor::from_slice(&rows).to_device(device)),
            Some(Tensor::from_slice(&cols).to_device(device)),
        ];
        let scores = scores.index_put(&masked, &Tensor::from(f32::NEG_INFINITY).to_device(device), false);
        let k_max = k_max.min(self.catalogue.news()) as i64;
        let (values, indices) = scores.topk(k_max, -1, true, true);
        let values: Vec<f32> = Vec::try_from(values.to_device(tch::Device::Cpu).view([-1])).expect("f32");
        let indices: Vec<i64> = Vec::try_from(indices.to_device(tch::Device::Cpu).view([-1])).expect("i64");
        positions
            .iter()
            .enumerate()
            .map(|(r, &i)| {
                let Work::Recommend { k, .. } = &answerable[i as usize].0 else {
                    unreachable!("a recommendation")
                };
                let row = r * k_max as usize;
                (row..row + (*k).min(k_max as usize))
                    .filter(|&j| values[j].is_finite())
                    .map(|j| (self.catalogue.id(indices[j]).to_string(), values[j]))
                    .collect()
            })
            .collect()
    }
}

/// Answers a query with an error.
fn fail(query: Work, error: RequestError) {
    match query {
        Work::Rank { reply, .. } => drop(reply.send(Err(error))),
        Work::Recommend { reply, .. } => drop(reply.send(Err(error))),
        Work::User { reply, .. } => drop(reply.send(Err(error))),
        Work::AddNews { reply, .. } => drop(reply.send(Err(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    /// Items queued together form one batch (up to `max_batch`); a panicking batch is logged
    /// and the next is still processed. After a batch of several, an item arriving within the
    /// window of the batch's first item joins it; after a batch of one, nothing is waited for.
    #[test]
    fn batches_gather_queued_items_wait_only_under_concurrency_and_survive_a_panic() {
        let (tx, rx) = sync_channel(16);
        let now = Instant::now();
        for item in [1, 2, 3, 13, 5] {
            tx.send((now, item)).unwrap();
        }
        let sender = std::thread::spawn(move || {
            let at = |ms: u64, item: i32| {
                std::thread::sleep(
                    (now + Duration::from_millis(ms)).saturating_duration_since(Instant::now()),
                );
                tx.send((Instant::now(), item)).unwrap();
            };
            at(500, 6); // after [13, 5]: a window opens at 6 ...
            at(550, 7); // ... which 7 joins
            at(1200, 8); // after [6, 7]: a window, which nothing joins
            at(1900, 9); // after [8]: no window ...
            at(2000, 10); // ... so 10 is a batch of its own
        });
        let policy = BatchPolicy { max_batch: 3, max_wait: Duration::from_millis(300) };
        let mut seen = Vec::new();
        let batches = run_batches(&rx, policy, |batch: Vec<i32>| {
            seen.push(batch.clone());
            assert!(!batch.contains(&13), "a batch with 13 panics");
        });
        sender.join().unwrap();
        assert_eq!(seen, vec![vec![1, 2, 3], vec![13, 5], vec![6, 7], vec![8], vec![9], vec![10]]);
        assert_eq!(batches, 6);
    }
}
