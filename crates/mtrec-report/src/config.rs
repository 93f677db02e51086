//! The run's `config.toml`: its digest, the fields that differ from the defaults, and which row
//! of the paper's Table 1 it trains.

use sha2::{Digest, Sha256};

/// sha256 (lowercase hex) of a file's bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// One field of a config whose value differs from the defaults' (`section.key = value`, the
/// values as TOML; `None` where one side lacks the field).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDiff {
    /// `section.key`, e.g. `mtl.surgery`.
    pub key: String,
    /// The run's value, as TOML (`"pcgrad"`, `0.001`, `{ kind = "lstur", mode = "ini" }`).
    pub value: Option<String>,
    /// The default value, as TOML.
    pub default: Option<String>,
}

impl std::fmt::Display for ConfigDiff {
    /// `mtl.surgery = "pcgrad"  # default "mtrec"`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.value, &self.default) {
            (Some(value), Some(default)) => write!(f, "{} = {value}  # default {default}", self.key),
            (Some(value), None) => write!(f, "{} = {value}  # not in the defaults", self.key),
            (None, Some(default)) => write!(f, "# {} absent (default {default})", self.key),
            (None, None) => write!(f, "# {}", self.key),
        }
    }
}

/// The order sections are listed in (the trainer's), then any other in name order.
const SECTIONS: [&str; 9] = ["model", "data", "train", "mtl", "optim", "eval", "checkpoint", "log", "dist"];

/// `section.key` -> value, in section order then key order. Sub-tables of a section
/// (`model.user_encoder`) are one field, rendered as an inline table.
fn fields(table: &toml::Table) -> Vec<(String, toml::Value)> {
    let mut sections: Vec<(&String, &toml::Value)> = table.iter().collect();
    let rank = |name: &str| SECTIONS.iter().position(|s| *s == name).unwrap_or(SECTIONS.len());
    sections.sort_by(|a, b| (rank(a.0), a.0).cmp(&(rank(b.0), b.0)));
    let mut out = Vec::new();
    for (section, value) in sections {
        match value {
            toml::Value::Table(keys) => {
                let mut keys: Vec<_> = keys.iter().collect();
                keys.sort_by(|a, b| a.0.cmp(b.0));
                out.extend(keys.into_iter().map(|(k, v)| (format!("{section}.{k}"), v.clone())));
            }
            other => out.push((section.clone(), other.clone())),
        }
    }
    out
}

/// A TOML value on one line (tables inline).
pub(crate) fn inline(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(table) => {
            let items: Vec<String> = table.iter().map(|(k, v)| format!("{k} = {}", inline(v))).collect();
            if items.is_empty() { "{}".into() } else { format!("{{ {} }}", items.join(", ")) }
        }
        toml::Value::Array(items) => {
            format!("[{}]", items.iter().map(inline).collect::<Vec<_>>().join(", "))
        }
        other => other.to_string(),
    }
}

/// The fields of `config` that differ from `defaults`, field by field, in the trainer's section
/// order: changed values, fields only the config has, fields only the defaults have.
pub fn config_diff(config: &toml::Table, defaults: &toml::Table) -> Vec<ConfigDiff> {
    let ours = fields(config);
    let theirs = fields(defaults);
    let find = |list: &[(String, toml::Value)], key: &str| {
        list.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let mut diffs: Vec<ConfigDiff> = ours
        .iter()
        .filter_map(|(key, value)| {
            let default = find(&theirs, key);
            (default.as_ref() != Some(value)).then(|| ConfigDiff {
                key: key.clone(),
                value: Some(inline(value)),
                default: default.as_ref().map(inline),
            })
        })
        .collect();
    diffs.extend(
        theirs.iter().filter(|(key, _)| find(&ours, key).is_none()).map(|(key, default)| ConfigDiff {
            key: key.clone(),
            value: None,
            default: Some(inline(default)),
        }),
    );
    diffs
}

/// One row of the paper's Table 1 (MIND-small, Bi et al. 2022), metrics in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperRow {
    /// The method as the paper names it.
    pub method: &'static str,
    /// AUC (%).
    pub auc: f64,
    /// MRR (%).
    pub mrr: f64,
    /// nDCG@5 (%).
    pub ndcg5: f64,
    /// nDCG@10 (%).
    pub ndcg10: f64,
}

/// The paper's Table 1 (MIND-small), values in percent.
pub const TABLE1: [PaperRow; 6] = [
    PaperRow { method: "BERT (baseline)", auc: 68.26, mrr: 32.52, ndcg5: 35.89, ndcg10: 42.33 },
    PaperRow { method: "LSTUR+BERT", auc: 68.28, mrr: 32.58, ndcg5: 35.99, ndcg10: 42.32 },
    PaperRow { method: "NRMS+BERT", auc: 68.60, mrr: 32.97, ndcg5: 36.55, ndcg10: 42.78 },
    PaperRow { method: "BERT+AMF", auc: 68.96, mrr: 33.42, ndcg5: 37.10, ndcg10: 43.27 },
    PaperRow { method: "MTRec", auc: 69.43, mrr: 33.79, ndcg5: 37.64, ndcg10: 43.74 },
    PaperRow { method: "MTRec+AMF", auc: 69.51, mrr: 34.06, ndcg5: 38.05, ndcg10: 44.03 },
];

/// The Table 1 row a resolved config trains, from `mtl.category`, `mtl.ner`, `mtl.surgery`,
/// `model.user_encoder.kind` and `model.amf`; `None` for anything else (the ablations of the
/// paper's Figure 4: one auxiliary task off, surgery `none` or `pcgrad`) and for a config that
/// lacks one of these fields.
pub fn table1_row(config: &toml::Table) -> Option<&'static PaperRow> {
    let get = |section: &str, key: &str| config.get(section)?.get(key);
    let category = get("mtl", "category")?.as_bool()?;
    let ner = get("mtl", "ner")?.as_bool()?;
    let amf = get("model", "amf")?.as_bool()?;
    let encoder = get("model", "user_encoder")?;
    let kind = encoder.as_str().or_else(|| encoder.get("kind")?.as_str())?;
    let method = match (category, ner, kind, amf) {
        (false, false, "additive", false) => "BERT (baseline)",
        (false, false, "lstur", false) => "LSTUR+BERT",
        (false, false, "nrms", false) => "NRMS+BERT",
        (false, false, "additive", true) => "BERT+AMF",
        (true, true, "additive", amf) if get("mtl", "surgery")?.as_str()? == "mtrec" => {
            if amf {
                "MTRec+AMF"
            } else {
                "MTRec"
            }
        }
        _ => return None,
    };
    TABLE1.iter().find(|row| row.method == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    const MTREC: &str = "[model]\namf = false\n[model.user_encoder]\nkind = \"additive\"\n\
        [mtl]\ncategory = true\nner = true\nsurgery = \"mtrec\"\n";

    #[test]
    fn table1_rows_follow_the_config() {
        assert_eq!(table1_row(&table(MTREC)).unwrap().method, "MTRec");
        assert_eq!(table1_row(&table(&MTREC.replace("amf = false", "amf = true"))).unwrap().auc, 69.51);
        assert_eq!(table1_row(&table(&MTREC.replace("\"mtrec\"", "\"pcgrad\""))), None);
        assert_eq!(table1_row(&table(&MTREC.replace("ner = true", "ner = false"))), None);
        let baseline =
            MTREC.replace("category = true", "category = false").replace("ner = true", "ner = false");
        assert_eq!(table1_row(&table(&baseline)).unwrap().method, "BERT (baseline)");
        // surgery does not matter without auxiliary tasks
        let lstur =
            baseline.replace("\"additive\"", "\"lstur\"\nmode = \"ini\"").replace("\"mtrec\"", "\"none\"");
        assert_eq!(table1_row(&table(&lstur)).unwrap().method, "LSTUR+BERT");
        assert_eq!(table1_row(&table("[mtl]\ncategory = true\n")), None);
    }

    #[test]
    fn diff_lists_changed_added_and_missing_fields_in_section_order() {
        let defaults = table(&format!("{MTREC}[train]\nbatch_size = 32\nseed = 42\n"));
        let config = table(&format!(
            "[train]\nbatch_size = 16\nseed = 42\nextra = 1\n{}",
            MTREC.replace("\"additive\"", "\"lstur\"\nmode = \"ini\"").replace("ner = true\n", "")
        ));
        let lines: Vec<String> = config_diff(&config, &defaults).iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "model.user_encoder = { kind = \"lstur\", mode = \"ini\" }  # default { kind = \"additive\" }",
                "train.batch_size = 16  # default 32",
                "train.extra = 1  # not in the defaults",
                "# mtl.ner absent (default true)",
            ]
        );
        assert!(config_diff(&defaults, &defaults).is_empty());
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
