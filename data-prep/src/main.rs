//! `mtrec-prep`: MIND and xMIND (`mind`) and EB-NeRD (`ebnerd`) to the sharded Parquet of the
//! mtrec data contract, and a synthetic data generator in either format (`synth`).
//!
//! ```text
//! mtrec-prep synth --out data/synth
//! mtrec-prep synth --profile mind --news 65238 --users 94057 --impressions 230117 --out data/mind-small-synth
//! mtrec-prep mind --train data/synth/train --dev data/synth/dev --test data/synth/test \
//!     --model MODEL_DIR --out data/shards
//! mtrec-prep synth --format ebnerd --out data/ebnerd
//! mtrec-prep ebnerd --train data/ebnerd/train --dev data/ebnerd/validation --test data/ebnerd/test \
//!     --model MODEL_DIR --out data/ebnerd-shards
//! ```

use mtrec_prep::shards::PrepOptions;
use mtrec_prep::{ebnerd, ebnerd_synth, mind, synth};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mtrec_data::{Manifest, NerScheme};

#[derive(Parser)]
#[command(
    name = "mtrec-prep",
    version,
    about = "MIND, xMIND and EB-NeRD to sharded Parquet, and a synthetic data generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare MIND split folders into shards (news.parquet, entity_embedding.parquet,
    /// train/dev/test parts, manifest.json).
    Mind(MindArgs),
    /// Prepare EB-NeRD split folders (behaviors.parquet, history.parquet; articles.parquet in
    /// the parent folder) into the same shards.
    Ebnerd(EbnerdArgs),
    /// Write a synthetic data set in the MIND format (DIR/train, DIR/dev, DIR/test), or in
    /// EB-NeRD's (--format ebnerd).
    Synth(SynthArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemeArg {
    /// O, B, I.
    Bio,
    /// O, B-T, I-T for every entity type T.
    Typed,
}

/// What `mind` and `ebnerd` both take.
#[derive(clap::Args)]
struct PrepArgs {
    /// Train folder (MIND: news.tsv, behaviors.tsv, entity_embedding.vec; EB-NeRD:
    /// behaviors.parquet, history.parquet, and articles.parquet in its parent folder).
    #[arg(long)]
    train: PathBuf,
    /// Dev folder (EB-NeRD: validation).
    #[arg(long)]
    dev: PathBuf,
    /// Test folder (labels optional; EB-NeRD's has none).
    #[arg(long)]
    test: Option<PathBuf>,
    /// Model folder with tokenizer.json, or vocab.txt (+ tokenizer_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Output shards folder (must not exist, or be empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Shards per split (default: one per 250,000 impressions; at most one per impression).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    shards: Option<usize>,
    /// Tokens per title, the special tokens ([CLS] and [SEP], or <s> and </s>) included.
    #[arg(long, default_value_t = 30)]
    max_title_len: usize,
    /// Most recent history entries kept per impression.
    #[arg(long, default_value_t = 50)]
    max_history: usize,
    /// Drop news ids that no news item has (MIND: in no news.tsv; EB-NeRD: in no
    /// articles.parquet), counted in the manifest, instead of failing.
    #[arg(long)]
    drop_unknown_news: bool,
    /// NER tag scheme (typed: MIND's entity types, EB-NeRD's entity_groups).
    #[arg(long, value_enum, default_value_t = SchemeArg::Bio)]
    ner_scheme: SchemeArg,
    /// Replace a non-empty --out.
    #[arg(long)]
    force: bool,
}

impl From<PrepArgs> for PrepOptions {
    fn from(a: PrepArgs) -> Self {
        PrepOptions {
            train: a.train,
            dev: a.dev,
            test: a.test,
            model: a.model,
            out: a.out,
            shards: a.shards,
            max_title_len: a.max_title_len,
            max_history: a.max_history,
            drop_unknown_news: a.drop_unknown_news,
            ner_scheme: a.ner_scheme.into(),
            force: a.force,
        }
    }
}

#[derive(clap::Args)]
struct MindArgs {
    #[command(flatten)]
    prep: PrepArgs,
    /// Translated titles (xMIND's news.tsv of one language: `news_id<TAB>title<TAB>abstract`)
    /// that replace every title by news id; a news item without one is an error. The shards
    /// then have no NER labels (MIND's entity offsets index the English titles).
    #[arg(long, value_name = "XMIND_NEWS_TSV", conflicts_with = "ner_scheme")]
    titles: Option<PathBuf>,
}

#[derive(clap::Args)]
struct EbnerdArgs {
    #[command(flatten)]
    prep: PrepArgs,
    /// Title text = title + ". " + subtitle (the title alone where the subtitle is null).
    #[arg(long)]
    subtitle: bool,
}

impl From<SchemeArg> for NerScheme {
    fn from(s: SchemeArg) -> Self {
        match s {
            SchemeArg::Bio => NerScheme::Bio,
            SchemeArg::Typed => NerScheme::Typed,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum SynthFormat {
    Mind,
    Ebnerd,
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// How the behaviors are distributed: `uniform` (small and quick) or `mind` (MIND's
    /// statistics; MIND-small size: --news 65238 --users 94057 --impressions 230117).
    #[arg(long, value_enum, default_value_t = synth::Profile::Uniform)]
    profile: synth::Profile,
    /// News items.
    #[arg(long, default_value_t = 2000)]
    news: usize,
    /// Users.
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// Impressions over the three splits (70% train, 15% dev, 15% test).
    #[arg(long, default_value_t = 4000)]
    impressions: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write test without labels, as MIND-large test.
    #[arg(long)]
    unlabeled_test: bool,
    /// The files written: MIND's TSV folders, or EB-NeRD's Parquet (`articles.parquet`,
    /// `train/`, `validation/`, `test/` with `behaviors.parquet` and `history.parquet`; the same
    /// content, with a real dump's nulls and gaps).
    #[arg(long, value_enum, default_value_t = SynthFormat::Mind)]
    format: SynthFormat,
    /// Replace a non-empty --out.
    #[arg(long)]
    force: bool,
}

fn summary(m: &Manifest, out: &std::path::Path) {
    let r = &m.prep_report;
    println!("wrote {}", out.display());
    println!(
        "  news {}  users {}  entities {}  categories {}  subcategories {}",
        m.num_news,
        m.num_users,
        m.num_entities,
        m.categories.len(),
        m.subcategories.len()
    );
    for (name, info, rep) in [
        ("train", &m.splits.train, &r.train),
        ("dev", &m.splits.dev, &r.dev),
        ("test", &m.splits.test, &r.test),
    ] {
        if let (Some(i), Some(s)) = (info, rep) {
            println!(
                "  {name:5} impressions {} in {} shard(s) (lines {}, impressions dropped {}, unknown news dropped {})",
                i.impressions,
                i.shards.len(),
                s.lines,
                s.dropped_impressions,
                s.dropped_unknown_news
            );
            if s.null_lists > 0 || s.users_without_history > 0 {
                println!(
                    "        impressions with a null in-view or clicked list dropped {}, users without a history row {}",
                    s.null_lists, s.users_without_history
                );
            }
        }
    }
    if r.ner_clusters > 0 || r.articles_without_ner_clusters > 0 {
        println!(
            "  ner_clusters {}: in the title {} ({:.1}%); articles with null ner_clusters {}",
            r.ner_clusters,
            r.ner_clusters_in_title,
            100.0 * r.ner_clusters_in_title as f64 / r.ner_clusters.max(1) as f64,
            r.articles_without_ner_clusters
        );
    }
    println!(
        "  NER occurrences {}: located by search {}, dropped {}, truncated {}; entities without a vector {}",
        r.ner_occurrences, r.ner_located_by_search, r.ner_dropped, r.ner_truncated, r.entities_without_vector
    );
    if r.duplicate_news_differing > 0 {
        println!(
            "  news ids defined differently in two places: {} (e.g. {:?})",
            r.duplicate_news_differing, r.duplicate_news_examples
        );
    }
    println!("  {:.2} s", r.elapsed_seconds);
}

fn main() -> ExitCode {
    // `info`: each phase logs its end and time, the progress a batch job's log gets (the
    // progress bars draw only on a terminal; so do colours).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Mind(a) => {
            let opts = mind::MindOptions { prep: a.prep.into(), titles: a.titles };
            mind::run(&opts).map(|m| summary(&m, &opts.prep.out))
        }
        Command::Ebnerd(a) => {
            let opts = ebnerd::EbnerdOptions { prep: a.prep.into(), subtitle: a.subtitle };
            ebnerd::run(&opts).map(|m| summary(&m, &opts.prep.out))
        }
        Command::Synth(a) => {
            let opts = synth::SynthOptions {
                profile: a.profile,
                news: a.news,
                users: a.users,
                impressions: a.impressions,
                seed: a.seed,
                unlabeled_test: a.unlabeled_test,
            };
            match a.format {
                SynthFormat::Mind => synth::run(&opts, &a.out, a.force)
                    .map(|()| println!("wrote {}/{{train,dev,test}}", a.out.display())),
                SynthFormat::Ebnerd => ebnerd_synth::synth(&opts, &a.out, a.force).map(|()| {
                    println!("wrote {}/{{articles.parquet,train,validation,test}}", a.out.display())
                }),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
