//! TensorBoard event files (`log.tensorboard`): every record `metrics.jsonl` gets, as scalars,
//! and the resolved config as text, under `run_dir/tensorboard/` (rank 0).
//!
//! No maintained Rust crate writes them (`tensorboard-rs` was last released in 2020), so the
//! messages are TensorFlow's `Event`, `Summary`, `SessionLog`, `TensorProto` and
//! `SummaryMetadata` (`tensorflow/core/util/event.proto`, `framework/summary.proto`; only the
//! fields used here, with their field numbers) encoded by `prost`, in TFRecord framing: each
//! record is its length (u64 little-endian), the masked CRC-32C of the length, the data, the
//! masked CRC-32C of the data (`mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`,
//! `tensorflow/core/lib/hash/crc32c.h`).
//!
//! **One series across resumes.** Each process writes its own file
//! (`events.out.tfevents.<unix time>.<host>.<pid>`). A resumed run's file starts with a
//! `SessionLog START` event at the first step it trains; TensorBoard (its default
//! `purge_orphaned_data`) then drops the steps at or after it that an earlier file logged, as
//! `metrics.jsonl` drops the records after the checkpoint. Each step thus has one value, the
//! one `metrics.jsonl` holds.
use crate::TrainError;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
    // (6 is the deprecated `log_message`)
    #[prost(message, optional, tag = "7")]
    session_log: Option<SessionLog>,
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, Message)]
struct SessionLog {
    /// 1 = START.
    #[prost(int32, tag = "1")]
    status: i32,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    /// 7 = DT_STRING.
    #[prost(int32, tag = "1")]
    dtype: i32,
    /// A scalar: the shape with no dimensions.
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShape {}

#[derive(Clone, PartialEq, Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// An event file being written; each call writes and flushes whole records.
pub(crate) struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl EventWriter {
    /// Creates the file under `dir` (created), with the file version and, when the run trains
    /// from `first_step` > 1 (a resume), the `SessionLog START` that hides what earlier files
    /// logged from `first_step` on; then `config_toml` as the text summary `config`.
    pub(crate) fn create(dir: &Path, first_step: u64, config_toml: &str) -> Result<EventWriter, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let now = unix_time();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let name = format!("events.out.tfevents.{:010}.{host}.{}", now as u64, std::process::id());
        let path = dir.join(name);
        let file = std::fs::File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut writer = EventWriter { path, file: std::io::BufWriter::new(file) };
        let version =
            Event { wall_time: now, file_version: Some("brain.Event:2".into()), ..Event::default() };
        writer.write(&version)?;
        if first_step > 1 {
            let start = Event {
                wall_time: now,
                step: first_step as i64,
                session_log: Some(SessionLog { status: 1 }),
                ..Event::default()
            };
            writer.write(&start)?;
        }
        let text = SummaryValue {
            tag: "config".into(),
            tensor: Some(TensorProto {
                dtype: 7,
                tensor_shape: Some(TensorShape {}),
                string_val: vec![format!("```toml\n{config_toml}```").into_bytes()],
            }),
            metadata: Some(SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".into() }) }),
            ..SummaryValue::default()
        };
        let step = first_step.saturating_sub(1) as i64;
        writer.write(&Event {
            wall_time: now,
            step,
            summary: Some(Summary { value: vec![text] }),
            ..Event::default()
        })?;
        writer.flush()?;
        Ok(writer)
    }

    /// The numbers of one `metrics.jsonl` record as scalars at its step ([`scalars`]).
    pub(crate) fn record(&mut self, record: &serde_json::Value) -> Result<(), TrainError> {
        let Some(step) = record["step"].as_u64() else { return Ok(()) };
        let value = scalars(record)
            .into_iter()
            .map(|(tag, v)| SummaryValue { tag, simple_value: Some(v as f32), ..SummaryValue::default() })
            .collect();
        let wall_time = record["time"].as_f64().unwrap_or_else(unix_time);
        self.write(&Event {
            wall_time,
            step: step as i64,
            summary: Some(Summary { value }),
            ..Event::default()
        })?;
        self.flush()
    }

    fn write(&mut self, event: &Event) -> Result<(), TrainError> {
        let data = event.encode_to_vec();
        let length = (data.len() as u64).to_le_bytes();
        let mut bytes = Vec::with_capacity(data.len() + 16);
        bytes.extend_from_slice(&length);
        bytes.extend_from_slice(&masked_crc(&length).to_le_bytes());
        bytes.extend_from_slice(&data);
        bytes.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.file.write_all(&bytes).map_err(|e| TrainError::io(&self.path, e))
    }

    fn flush(&mut self) -> Result<(), TrainError> {
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

fn unix_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The tags and values of a record's numbers: a training record's fields as `train/<field>`,
/// an evaluation's as `<split>/<field>` (its groups `<split>/groups/<group>/<metric>`, its top-k
/// lists `<split>/top<k>/<metric>`), an early stop's as `early_stop/<field>`. `step` and `time`
/// are the event's own; strings, booleans and nulls are not scalars.
pub(crate) fn scalars(record: &serde_json::Value) -> Vec<(String, f64)> {
    let prefix = match record["eval"].as_str() {
        Some(split) => split.to_string(),
        None if record["loss_main"].is_number() => "train".into(),
        None => String::new(),
    };
    let mut out = Vec::new();
    if let Some(fields) = record.as_object() {
        for (key, value) in fields.iter().filter(|(k, _)| !matches!(k.as_str(), "step" | "time")) {
            let tag = if prefix.is_empty() { key.clone() } else { format!("{prefix}/{key}") };
            flatten(&tag, value, &mut out);
        }
    }
    out
}

fn flatten(tag: &str, value: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    match value {
        serde_json::Value::Number(n) => out.extend(n.as_f64().map(|v| (tag.to_string(), v))),
        serde_json::Value::Object(fields) => {
            for (key, value) in fields {
                flatten(&format!("{tag}/{key}"), value, out);
            }
        }
        // The top-k lists: one per k.
        serde_json::Value::Array(items) => {
            let parent = tag.rsplit_once('/').map_or("", |(p, _)| p);
            for item in items {
                if let Some(k) = item["k"].as_u64() {
                    let base = if parent.is_empty() { format!("top{k}") } else { format!("{parent}/top{k}") };
                    for (key, value) in item.as_object().into_iter().flatten().filter(|(key, _)| *key != "k")
                    {
                        flatten(&format!("{base}/{key}"), value, out);
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFRecord's masked CRC-32C of known bytes: CRC-32C("123456789") = 0xe3069283 (its check
    /// value); rotated right by 15 bits, 0x2507c60d, plus 0xa282ead8: 0xc78ab0e5 (by hand).
    #[test]
    fn masked_crc_of_the_check_string() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn records_become_tagged_scalars() {
        let train = serde_json::json!({"step": 5, "time": 1.0, "loss_main": 0.5, "lr_bert": 1e-5,
            "loss_ner": null, "epoch": 0});
        let mut tags = scalars(&train);
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            tags,
            [("train/epoch".into(), 0.0), ("train/loss_main".into(), 0.5), ("train/lr_bert".into(), 1e-5)]
        );
        let eval = serde_json::json!({"step": 5, "eval": "dev", "auc": 0.6,
            "groups": {"history 0": {"auc": 0.55}},
            "beyond_accuracy": [{"k": 5, "coverage": 0.3}, {"k": 10, "coverage": 0.4, "novelty": null}]});
        let mut tags = scalars(&eval);
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        let expected: Vec<(String, f64)> = [
            ("dev/auc", 0.6),
            ("dev/groups/history 0/auc", 0.55),
            ("dev/top10/coverage", 0.4),
            ("dev/top5/coverage", 0.3),
        ]
        .into_iter()
        .map(|(t, v)| (t.to_string(), v))
        .collect();
        assert_eq!(tags, expected);
    }
}
