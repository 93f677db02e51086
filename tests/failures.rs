//! A failure on any rank ends the whole job, quickly, with that rank's own message: 2-rank jobs
//! under mpirun in which one rank gets a bad input, as when one node lacks a mount. The odd rank
//! out is made with an MPMD launch (`mpirun -n 1 A : -n 1 B`): B is the same worker in another
//! environment, with other `--set`s, or behind `unshare -m` with an empty folder bind-mounted
//! over a path (a node without the mount).
use mtrec_e2e::{
    binary, hostname, mpirun, mpirun_alone, python, repo_root, run, signal_a_rank, stdout, synthetic_shards,
    tiny_args,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a failing job may take to end: loose, a hang is what is caught.
const ENDS_WITHIN: Duration = Duration::from_secs(60);

struct Fixture {
    root: PathBuf,
    shards: PathBuf,
    empty: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("failures");
        if root.exists() {
            std::fs::remove_dir_all(&root).unwrap();
        }
        let empty = root.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let shards = synthetic_shards(&root);
        Fixture { root, shards, empty }
    })
}

/// The worker's arguments: `command --config configs/tiny.toml` on the fixture's shards.
fn args(command: &str, run_dir: &Path, sets: &[&str]) -> Vec<String> {
    tiny_args(command, &fixture().shards, run_dir, &[&["eval.max_impressions=50"], sets].concat())
}

/// How rank 1 differs from rank 0.
enum Rank1 {
    /// Other worker arguments.
    Args(Vec<String>),
    /// The same arguments with these environment variables.
    Env(&'static [(&'static str, &'static str)]),
    /// The same arguments with an empty folder mounted over this path.
    Without(PathBuf),
}

/// `mpirun -n 1 worker ARGS : -n 1 <rank 1>`.
fn mpmd(args: &[String], rank1: Rank1) -> Command {
    let worker = binary("mtrec-worker");
    let mut cmd = mpirun_alone();
    cmd.args(["--oversubscribe", "--allow-run-as-root", "-n", "1"])
        .arg(&worker)
        .args(args)
        .args([":", "-n", "1"]);
    match rank1 {
        Rank1::Args(other) => cmd.arg(&worker).args(other),
        Rank1::Env(vars) => {
            cmd.arg("env").args(vars.iter().map(|(k, v)| format!("{k}={v}"))).arg(&worker).args(args)
        }
        Rank1::Without(path) => {
            let script = format!(
                "mount --bind {} {} && exec \"$0\" \"$@\"",
                fixture().empty.display(),
                path.display()
            );
            cmd.args(["unshare", "-m", "sh", "-c", &script]).arg(&worker).args(args)
        }
    };
    cmd.current_dir(repo_root());
    cmd
}

/// Runs a job that must fail: it ends within [`ENDS_WITHIN`] with a non-zero status, and its
/// output carries `message`. Returns the output and the seconds it took.
fn fails_with(mut job: Command, message: &str) -> (String, f64) {
    let started = Instant::now();
    let mut child = job
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {job:?}: {e}"));
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > ENDS_WITHIN {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {ENDS_WITHIN:?}:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seconds = started.elapsed().as_secs_f64();
    let out = child.wait_with_output().unwrap();
    let output = text(&out);
    assert!(!out.status.success(), "the job must fail:\n{output}");
    assert!(output.contains(message), "no {message:?} in:\n{output}");
    println!(
        "ended in {seconds:.1} s ({}): {}",
        out.status,
        output.lines().find(|l| l.contains(message)).unwrap()
    );
    (output, seconds)
}

fn text(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn rank_1_without_its_shards_ends_the_job() {
    let a = args("train", &fixture().root.join("no-shards"), &[]);
    let message = format!(
        "error: rank 1 on {}: {}/manifest.json: No such file or directory",
        hostname(),
        fixture().shards.display()
    );
    let (output, _) = fails_with(mpmd(&a, Rank1::Without(fixture().shards.clone())), &message);
    assert_eq!(output.matches("No such file or directory").count(), 1, "said once:\n{output}");
    assert_eq!(output.matches("manifest.json").count(), 1, "the path named once:\n{output}");
}

#[test]
fn rank_1_with_another_config_ends_the_job() {
    let run_dir = fixture().root.join("other-config");
    let (a, b) =
        (args("train", &run_dir, &[]), args("train", &run_dir, &["train.seed=8", "data.negatives=2"]));
    let message = format!(
        "error: rank 1 on {}: distributed: the resolved config differs from rank 0's: data.negatives = 2 \
         here, 4 on rank 0; train.seed = 8 here, 7 on rank 0",
        hostname()
    );
    fails_with(mpmd(&a, Rank1::Args(b)), &message);
}

#[test]
fn rank_0_unable_to_create_its_run_dir_ends_the_job() {
    let file = fixture().root.join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let run_dir = file.join("run");
    let message = format!("error: rank 0 on {}: {}: Not a directory", hostname(), run_dir.display());
    fails_with(mpirun(2, worker(&args("train", &run_dir, &[]))), &message);
}

#[test]
fn rank_1_failing_mid_run_ends_the_job() {
    let a = args("train", &fixture().root.join("mid-run"), &["train.max_steps=1000"]);
    let message =
        format!("error: rank 1 on {}: distributed: MTREC_FAULT asked for an error after step 3", hostname());
    fails_with(mpmd(&a, Rank1::Env(&[("MTREC_FAULT", "error@3")])), &message);
}

#[test]
fn a_panic_on_one_rank_ends_the_job() {
    let a = args("train", &fixture().root.join("panic"), &["train.max_steps=1000"]);
    let message = format!("error: rank 1 on {}: panic: panicked at", hostname());
    let (output, _) = fails_with(mpmd(&a, Rank1::Env(&[("MTREC_FAULT", "panic@3")])), &message);
    assert!(output.contains("MTREC_FAULT asked for a panic after step 3"), "{output}");
}

/// A rank that stops making progress (SIGSTOP: a hung node) is caught by the others' watchdogs.
#[test]
fn a_hung_rank_ends_the_job_after_the_timeout() {
    let run_dir = fixture().root.join("hung");
    let job = mpirun(2, worker(&args("train", &run_dir, &["train.max_steps=100000", "dist.timeout_s=5"])));
    let (mut job, started) = (job, Instant::now());
    let child =
        job.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for_line(&run_dir.join("metrics.jsonl"), "\"step\":");
    signal_a_rank(child.id(), "STOP");
    let stopped_at = Instant::now();
    let out = child.wait_with_output().unwrap();
    let (output, seconds) = (text(&out), stopped_at.elapsed().as_secs_f64());
    assert!(started.elapsed() < ENDS_WITHIN * 2, "{output}");
    assert!(!out.status.success(), "{output}");
    // The liveness link of the running rank sees it first: no heartbeat for half of
    // dist.timeout_s (at least 3 s), before its watchdog's 5 s without progress.
    let seen = |l: &&str| l.contains("no heartbeat for 3 s");
    assert!(output.lines().any(|l| seen(&l)), "{output}");
    println!("ended {seconds:.1} s after a rank was stopped: {}", output.lines().find(seen).unwrap());
    assert!(seconds < 30.0, "ended {seconds:.1} s after the rank stopped, with a 5 s timeout");
}

#[test]
fn rank_1_without_the_checkpoint_ends_the_job() {
    let run_dir = fixture().root.join("no-checkpoint");
    run(&mut mpirun(2, worker(&args("train", &run_dir, &["train.max_steps=4"]))), true);
    // Rank 1 sees the run directory (rank 0's token in it) but not the checkpoint in it.
    let checkpoint = run_dir.join("step-00000004");
    let mut a = args("train", &run_dir, &["train.max_steps=8"]);
    a.extend(["--resume".into(), "auto".into(), "--reschedule".into()]);
    let message = format!(
        "error: rank 1 on {}: checkpoint: cannot read the checkpoint rank 0 resumes: {}: trainer.json: No such file",
        hostname(),
        checkpoint.display()
    );
    fails_with(mpmd(&a, Rank1::Without(checkpoint)), &message);
}

#[test]
fn used_run_dirs_are_refused_and_stale_writes_removed() {
    let run_dir = fixture().root.join("used");
    run(&mut mpirun(2, worker(&args("train", &run_dir, &["train.max_steps=4"]))), true);
    let message = format!(
        "error: rank 0 on {}: config: train.run_dir {} already holds checkpoints (step-00000004): continue \
         that run with --resume auto, or give this run another train.run_dir",
        hostname(),
        run_dir.display()
    );
    fails_with(mpirun(2, worker(&args("train", &run_dir, &[]))), &message);

    // A killed writer's temporary folder is removed (and said) at the next start.
    let stale = run_dir.join(".tmp-step-00000008-12345");
    std::fs::create_dir_all(&stale).unwrap();
    let mut resume = args("train", &run_dir, &["train.max_steps=4"]);
    resume.extend(["--resume".into(), "auto".into()]);
    let out = run(&mut worker(&resume), true);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("removed {}", stale.display())));
    assert!(!stale.exists());

    // --resume auto where no checkpoint verifies says why each was rejected.
    std::fs::write(run_dir.join("step-00000004/model.safetensors"), b"damaged").unwrap();
    std::fs::create_dir_all(run_dir.join("step-00000002")).unwrap();
    let message = "checkpoint: --resume auto: no checkpoint of";
    let (output, _) = fails_with(worker(&resume), message);
    assert!(output.contains("step-00000004: model.safetensors has sha256"), "{output}");
    assert!(output.contains("step-00000002: trainer.json"), "{output}");
}

/// A value outside its vocabulary in news.parquet is refused naming the file, row and column,
/// before it reaches the model.
#[test]
fn out_of_vocabulary_values_are_refused_by_row_and_column() {
    let bad = fixture().root.join("bad-shards");
    let copy = format!("cp -r {} {}", fixture().shards.display(), bad.display());
    run(Command::new("sh").args(["-c", &copy]), true);
    let script = r#"
import sys, json, hashlib, pyarrow.parquet as pq, pyarrow as pa
folder = sys.argv[1]
table = pq.read_table(folder + "/news.parquet")
ids = table.column("input_ids").to_pylist()
ids[4][2] = 999999
table = table.set_column(table.column_names.index("input_ids"), "input_ids", pa.array(ids, table.schema.field("input_ids").type))
pq.write_table(table, folder + "/news.parquet")
manifest = json.load(open(folder + "/manifest.json"))
for entry in manifest["files"]:
    if entry["path"] == "news.parquet":
        entry["sha256"] = hashlib.sha256(open(folder + "/news.parquet", "rb").read()).hexdigest()
json.dump(manifest, open(folder + "/manifest.json", "w"))
"#;
    run(Command::new(python()).arg("-c").arg(script).arg(&bad), true);
    let mut a = args("train", &fixture().root.join("bad-values"), &[]);
    a.extend(["--set".into(), format!("data.shards={}", bad.display())]);
    let message = format!(
        "{}: row 4: `input_ids`: token id 999999 is outside the model's vocabulary of 30522",
        bad.join("news.parquet").display()
    );
    fails_with(mpirun(2, worker(&a)), &message);
}

/// A SIGTERM that reaches one rank during an evaluation stops the evaluation within seconds on
/// every rank: the step's checkpoint is written, the stop said, and the job exits 75.
#[test]
fn sigterm_during_evaluation_checkpoints_and_exits_75() {
    let run_dir = fixture().root.join("sigterm-eval");
    // One title and one impression per evaluation round: the evaluation takes seconds.
    let sets = [
        "train.max_steps=1000",
        "eval.every=5",
        "log.every=5",
        "eval.max_impressions=0",
        "eval.news_batch=1",
        "eval.user_batch=1",
    ];
    let mut job = mpirun(2, worker(&args("train", &run_dir, &sets)));
    let child =
        job.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Step 5 logged: its evaluation runs now.
    wait_for_line(&run_dir.join("metrics.jsonl"), "\"step\":5,");
    signal_a_rank(child.id(), "TERM");
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    let (output, seconds) = (text(&out), signalled.elapsed().as_secs_f64());
    assert_eq!(out.status.code(), Some(75), "{output}");
    let expected =
        format!("stopped at step 5 (SIGTERM); checkpoint {}", run_dir.join("step-00000005").display());
    assert!(output.contains(&expected), "{output}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert!(!metrics.contains("\"auc\""), "the evaluation was stopped, not finished: {metrics}");
    assert!(run_dir.join("step-00000005/trainer.json").is_file());
    println!("stopped {seconds:.1} s after the SIGTERM, during the evaluation after step 5");
    assert!(seconds < 20.0, "took {seconds:.1} s");
}

fn worker(args: &[String]) -> Command {
    let mut cmd = Command::new(binary("mtrec-worker"));
    cmd.args(args).current_dir(repo_root());
    cmd
}

/// Waits until `path` has a line containing `text`.
fn wait_for_line(path: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l.contains(text))) {
        assert!(Instant::now() < deadline, "no {text:?} in {} within 120 s", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn nccl_asked_for_on_the_cpu_is_refused_by_name() {
    let run_dir = fixture().root.join("nccl-on-cpu");
    let message = "dist.backend = \"nccl\" needs CUDA tensors, but this rank computes on Cpu";
    let job = mpirun(2, worker(&args("train", &run_dir, &["dist.backend=nccl", "train.device=cpu"])));
    let (output, _) = fails_with(job, message);
    assert!(output.contains(&format!("error: rank 0 on {}: {message}", hostname())), "{output}");
}

/// A missing input of `mtrec-prep` is named with its OS error said once (it was said twice: the
/// error's text and its chained source), and nothing is written.
#[test]
fn prep_names_a_missing_input_once() {
    let root = fixture().root.join("prep-missing");
    let model = mtrec_e2e::model_dir();
    let empty = root.join("empty-model");
    std::fs::create_dir_all(&empty).unwrap();
    let out = root.join("shards");
    for (model, says) in [
        (&model, "nonexistent/train/news.tsv: No such file or directory (os error 2)"),
        (&empty, "empty-model: neither tokenizer.json nor vocab.txt found"),
    ] {
        let output = run(
            Command::new(binary("mtrec-prep"))
                .args(["mind", "--train", "/nonexistent/train", "--dev", "/nonexistent/dev", "--model"])
                .arg(model)
                .arg("--out")
                .arg(&out),
            false,
        );
        let said = text(&output);
        assert!(!output.status.success() && said.contains(says), "{said}");
        let cause = says.rsplit(": ").next().unwrap();
        assert_eq!(said.matches(cause).count(), 1, "said once:\n{said}");
        assert!(!out.exists(), "{} written by a failed prep", out.display());
    }
}
