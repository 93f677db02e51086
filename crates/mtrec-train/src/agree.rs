//! Proof that every rank runs the same job on the same state: rank 0's value is broadcast, and a
//! rank whose own value differs fails naming what differs (the binary's failure path adds the
//! rank and ends the job). Host bytes only: the same on MPI and NCCL.
use crate::TrainError;
use crate::config::Config;
use mtrec_dist::Collective;
use std::collections::BTreeMap;

/// Broadcasts rank 0's `mine` and fails on a rank whose `mine` differs; `describe(rank0, mine)`
/// says how.
pub fn same_on_every_rank(
    collective: &dyn Collective,
    what: &str,
    mine: &[u8],
    describe: &dyn Fn(&[u8], &[u8]) -> String,
) -> Result<(), TrainError> {
    let mut reference = mine.to_vec();
    collective.broadcast_bytes(&mut reference, 0)?;
    if reference != mine {
        return Err(TrainError::Dist(format!(
            "{what} differs from rank 0's: {}",
            describe(&reference, mine)
        )));
    }
    Ok(())
}

/// Rank 0's `value` on every rank.
pub fn rank_zero_value(collective: &dyn Collective, value: String) -> Result<String, TrainError> {
    let mut bytes = value.into_bytes();
    collective.broadcast_bytes(&mut bytes, 0)?;
    String::from_utf8(bytes)
        .map_err(|e| TrainError::Dist(format!("rank 0 sent a value that is not UTF-8: {e}")))
}

/// Every rank resolved the same config (file, `--set` overrides, defaults).
pub fn agree_on_config(config: &Config, collective: &dyn Collective) -> Result<(), TrainError> {
    let describe = |rank0: &[u8], mine: &[u8]| {
        config_differences(&String::from_utf8_lossy(rank0), &String::from_utf8_lossy(mine))
    };
    same_on_every_rank(collective, "the resolved config", config.to_toml().as_bytes(), &describe)
}

/// `section.key = value` of every field of a resolved config.
fn fields(toml_text: &str) -> BTreeMap<String, String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (key, value) in table {
            let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                toml::Value::Table(inner) if !name.contains('.') => walk(&name, inner, out),
                other => {
                    out.insert(name, other.to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(table) = toml::from_str::<toml::Table>(toml_text) {
        walk("", &table, &mut out);
    }
    out
}

/// The fields that differ: `train.seed = 8 here, 7 on rank 0; ...`.
pub fn config_differences(rank0: &str, mine: &str) -> String {
    let (theirs, ours) = (fields(rank0), fields(mine));
    let missing = "(unset)".to_string();
    let keys: std::collections::BTreeSet<&String> = theirs.keys().chain(ours.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|k| theirs.get(*k) != ours.get(*k))
        .map(|k| {
            format!(
                "{k} = {} here, {} on rank 0",
                ours.get(k).unwrap_or(&missing),
                theirs.get(k).unwrap_or(&missing)
            )
        })
        .collect();
    if differences.is_empty() { "the same fields, in another form".into() } else { differences.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_differences_name_each_field_with_both_values() {
        let a = Config::parse("[train]\nseed = 7\n", &[]).unwrap().to_toml();
        let b = Config::parse("[train]\nseed = 8\n[data]\nnegatives = 2\n", &[]).unwrap().to_toml();
        assert_eq!(
            config_differences(&a, &b),
            "data.negatives = 2 here, 4 on rank 0; train.seed = 8 here, 7 on rank 0"
        );
        let lstur =
            Config::parse("", &["model.user_encoder={ kind = \"lstur\", mode = \"con\" }".into()]).unwrap();
        let diff = config_differences(&a, &lstur.to_toml());
        assert!(diff.starts_with("model.user_encoder = { kind = \"lstur\""), "{diff}");
    }
}
