//! SLURM for real, and launching on many nodes:
//! - `launch/mpirun.sh` spreads the ranks evenly over the hosts of a hostfile (`--map-by
//!   ppr:N:node`) and hands every rank its environment;
//! - `launch/slurm/mtrec.sbatch` on the one-node cluster of `launch/slurm/local-cluster.sh`
//!   (Debian's munge, slurmctld and slurmd): interrupted the ways a cluster interrupts a job
//!   (the time-limit warning, SIGTERM to the tasks, `scontrol requeue`), requeued on the marker the
//!   ranks write, resumed with `--resume auto`, and finished with the weights of an uninterrupted
//!   run; jobs that fail for real end instead of requeueing.
use mtrec_e2e::{
    LocalNodes, binary, max_param_diff, mpirun, mpirun_alone, nodes_script, repo_root, run, stdout,
    synthetic_shards,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long one phase of a job may take (a start, a requeue, a finish): loose, a job that hangs
/// or never comes back is what is caught, not speed. A requeued job waits ~11 s (the local
/// cluster's cred_expire + 1) before it starts again.
const PHASE: Duration = Duration::from_secs(240);

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("slurm").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `probe` every 100 ms until it returns a value, or panics after `limit` with `what` and
/// the `context` of that moment (the job's output so far).
fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(start.elapsed() < limit, "{what}: not within {} s\n{}", limit.as_secs(), context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `Data for node: HOST ... Num procs: N` rows of the first job map mpirun displays.
fn job_map(text: &str) -> Vec<(String, usize)> {
    let mut map: Vec<(String, usize)> = Vec::new();
    for line in text.lines().filter(|l| l.contains("Data for node:")) {
        let host =
            line.split("Data for node:").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        let procs = line.split("Num procs:").nth(1).unwrap().trim().parse().unwrap();
        if map.iter().any(|(h, _)| *h == host) {
            break; // --display-map may print the map twice
        }
        map.push((host, procs));
    }
    map
}

/// `launch/mpirun.sh` with a hostfile naming this machine twice, as `localhost` and as
/// 127.0.0.2, two slots each: OpenMPI takes them for two hosts, starts an orted on 127.0.0.2
/// through a "remote shell" that runs it here with an empty environment (as ssh would), so
/// only what mpirun forwards reaches that host's ranks. The ranks are spread GPUS_PER_NODE per
/// host, where mpirun's default (fill the first host's slots) puts them all on localhost.
#[test]
fn mpirun_sh_spreads_ranks_over_the_hosts_and_forwards_the_environment() {
    let dir = tmp("mpirun-map");
    let hostfile = dir.join("hosts");
    std::fs::write(&hostfile, "localhost slots=2\n127.0.0.2 slots=2\n").unwrap();
    let agent = dir.join("local-rsh");
    std::fs::write(&agent, "#!/bin/sh\n# ssh HOST COMMAND, run here in an empty environment\nshift\nexec env -i PATH=\"$PATH\" sh -c \"$*\"\n")
        .unwrap();
    run(Command::new("chmod").arg("+x").arg(&agent), true);
    // The agent goes in as MTREC_RSH_AGENT: mpirun.sh sets plm_rsh_agent itself (its
    // remote-shell.sh, which runs the agent), and OpenMPI refuses an MCA parameter given twice.
    let flags = format!("--hostfile {} --display-map", hostfile.display());

    // mpirun's own mapping, for contrast: 2 ranks fill localhost's 2 slots.
    let out =
        run(
            mpirun_alone()
                .args(["-n", "2", "--allow-run-as-root", "--display-map", "--do-not-launch"])
                .args(["--hostfile", hostfile.to_str().unwrap(), "hostname"]),
            true,
        );
    let default_map = job_map(&stdout(&out));
    println!("mpirun -n 2, default mapping: {default_map:?}");
    assert_eq!(default_map.iter().map(|(_, n)| n).sum::<usize>(), 2);
    assert!(default_map.iter().any(|(_, n)| *n == 2), "mpirun's default no longer packs: {default_map:?}");

    let cores: usize = stdout(&run(&mut Command::new("nproc"), true)).trim().parse().unwrap();
    let report = r#"echo "rank=$OMPI_COMM_WORLD_RANK local_size=$OMPI_COMM_WORLD_LOCAL_SIZE omp=$OMP_NUM_THREADS nccl=${NCCL_MTREC_TEST:-} rust=${RUST_BACKTRACE:-} mtrec=${MTREC_TEST_VALUE:-} cuda=${CUDA_VISIBLE_DEVICES:-} home=${HOME:-none}""#;
    for per_node in [1usize, 2] {
        let ranks = 2 * per_node;
        let out = run(
            Command::new(repo_root().join("launch/mpirun.sh"))
                .arg(ranks.to_string())
                .args(["-c", report])
                .env("GPUS_PER_NODE", per_node.to_string())
                .env("MTREC_WORKER", "/bin/sh")
                .env("MPIRUN_FLAGS", &flags)
                .env("MTREC_RSH_AGENT", &agent)
                .env("NCCL_MTREC_TEST", "nccl-value")
                .env("RUST_BACKTRACE", "1")
                .env("MTREC_TEST_VALUE", "mtrec-value")
                .env("CUDA_VISIBLE_DEVICES", "0,1")
                .env_remove("OMP_NUM_THREADS"),
            true,
        );
        let text = stdout(&out);
        println!("launch/mpirun.sh {ranks} with GPUS_PER_NODE={per_node}:\n{text}");
        let map = job_map(&text);
        assert_eq!(map.len(), 2, "two hosts in the map: {map:?}\n{text}");
        assert!(map.iter().all(|(_, n)| *n == per_node), "{per_node} ranks per host: {map:?}\n{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("rank=")).collect();
        assert_eq!(rows.len(), ranks, "{text}");
        let omp = (cores / per_node).max(1);
        for row in &rows {
            for expected in [
                format!("local_size={per_node} "),
                format!("omp={omp} "),
                "nccl=nccl-value ".into(),
                "rust=1 ".into(),
                "mtrec=mtrec-value ".into(),
                "cuda=0,1 ".into(),
            ] {
                assert!(row.contains(&expected), "{row}: lacks {expected}");
            }
        }
        // The 127.0.0.2 ranks really started in an empty environment: what they have came from -x.
        assert_eq!(rows.iter().filter(|r| r.ends_with("home=none")).count(), per_node, "{text}");
    }
}

/// One run of the SLURM test at a time on this machine: another `cargo test` of this file would
/// share the cluster (and stop it under this one) and the folders. Held until dropped.
fn exclusive() -> std::fs::File {
    let path = repo_root().join("target/slurm-test.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).unwrap();
    if file.try_lock().is_err() {
        println!("waiting for another run of this test to finish ({})", path.display());
        file.lock().unwrap();
    }
    file
}

/// The local cluster, stopped when dropped (also when a test panics).
struct Cluster {
    conf: PathBuf,
    /// The nodes a job asks for.
    job_nodes: usize,
}

/// `local-cluster.sh ACTION` (words: `slurmd node2`).
fn cluster_script(action: &str) -> Output {
    let out = Command::new("bash")
        .arg(repo_root().join("launch/slurm/local-cluster.sh"))
        .args(action.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("cannot run local-cluster.sh {action}: {e}"));
    println!("local-cluster.sh {action}:\n{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    out
}

impl Cluster {
    /// This machine as the one node (`local-cluster.sh start`).
    fn start() -> Cluster {
        Cluster::start_with("start", 1)
    }

    /// The running local nodes, one slurmd each (`local-cluster.sh start-nodes`); a job asks
    /// for `job_nodes` of them.
    fn start_nodes(job_nodes: usize) -> Cluster {
        Cluster::start_with("start-nodes", job_nodes)
    }

    fn start_with(action: &str, job_nodes: usize) -> Cluster {
        let out = cluster_script(action);
        assert!(out.status.success(), "local-cluster.sh {action} failed");
        let env = stdout(&cluster_script("env"));
        let conf = env.trim().strip_prefix("export SLURM_CONF=").expect("env prints SLURM_CONF").into();
        Cluster { conf, job_nodes }
    }

    /// A SLURM client command pointed at this cluster, without the SLURM_* variables of any
    /// job this test itself may run in.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLURM_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("SLURM_CONF", &self.conf).current_dir(repo_root());
        cmd
    }

    /// `sbatch launch/slurm/mtrec.sbatch` on `job_nodes` nodes x 2 tasks of 1 CPU and no GPU
    /// (overriding the script's GPU-cluster defaults); returns the job id.
    fn submit(&self, output: &Path, env: &[(&str, &str)], args: &[String]) -> String {
        self.submit_with(&[], output, env, args)
    }

    /// [`Cluster::submit`] with more sbatch flags (`--nodelist=...`).
    fn submit_with(&self, flags: &[&str], output: &Path, env: &[(&str, &str)], args: &[String]) -> String {
        let mut cmd = self.command("sbatch");
        cmd.args(["--parsable", &format!("--nodes={}", self.job_nodes)])
            .args(flags)
            .args(["--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-task=0"])
            .arg("--time=20")
            .arg(format!("--output={}", output.display()))
            .arg("launch/slurm/mtrec.sbatch")
            .args(args)
            .env("MTREC_WORKER", binary("mtrec-worker"))
            .env("NO_COLOR", "1");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let id = stdout(&run(&mut cmd, true)).trim().to_string();
        assert!(id.chars().all(|c| c.is_ascii_digit()) && !id.is_empty(), "sbatch printed {id:?}");
        id
    }

    /// `JobState` and `Restarts` of a job (None once SLURM forgot it).
    fn job(&self, id: &str) -> Option<(String, u32)> {
        Some((self.job_field(id, "JobState")?, self.job_field(id, "Restarts")?.parse().ok()?))
    }

    /// One field of `scontrol show job` (None once SLURM forgot the job).
    fn job_field(&self, id: &str, name: &str) -> Option<String> {
        let out = self.command("scontrol").args(["show", "job", "-o", id]).output().ok()?;
        let prefix = format!("{name}=");
        stdout(&out).split_whitespace().find_map(|f| f.strip_prefix(&prefix).map(str::to_string))
    }

    /// Panics, with the job's output, when job `id` ended (a phase waiting on it would hang).
    fn assert_not_ended(&self, id: &str, output: &Path) {
        if let Some((state, restarts)) = self.job(id) {
            assert!(
                !ENDED.contains(&state.as_str()),
                "job {id} ended ({state}, {restarts} restarts) too early; its output:\n{}",
                read(output)
            );
        }
    }

    fn signal(&self, args: &[&str]) {
        println!("-> {}", args.join(" "));
        let program = args[0];
        run(self.command(program).args(&args[1..]), true);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        cluster_script("stop");
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The newest complete checkpoint's step (`step-NNNNNNNN` folders; a checkpoint is renamed into
/// place only when complete).
fn newest_checkpoint(run_dir: &Path) -> Option<u64> {
    std::fs::read_dir(run_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("step-")?.parse().ok())
        .max()
}

/// The step in the last "checkpoint at step S" line of the batch script's output.
fn last_interrupted_step(output: &str) -> Option<u64> {
    output
        .lines()
        .rev()
        .find_map(|l| l.split("checkpoint at step ").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
}

/// The final job states.
const ENDED: [&str; 6] = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"];

/// Waits until job `id` ended (a final state, not pending again); returns that state.
fn wait_until_ended(cluster: &Cluster, id: &str, output: &Path) -> (String, u32) {
    wait_for(
        &format!("job {id} to end"),
        PHASE,
        || {
            let (state, restarts) = cluster.job(id)?;
            ENDED.contains(&state.as_str()).then_some((state, restarts))
        },
        || read(output),
    )
}

/// Training arguments for the sbatch script: the tiny config on the test's shards.
fn train_args(shards: &Path, run_dir: &Path, sets: &[&str]) -> Vec<String> {
    let mut args = vec!["configs/tiny.toml".to_string()];
    let shards = format!("data.shards={}", shards.display());
    let run_dir = format!("train.run_dir={}", run_dir.display());
    for set in [shards.as_str(), run_dir.as_str(), "eval.max_impressions=50"].iter().chain(sets) {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    args
}

const STEPS: u64 = 80;
const SETS: [&str; 5] =
    ["train.max_steps=80", "checkpoint.every=10", "checkpoint.keep=3", "model.dropout=0.0", "optim.eps=1e-3"];

/// One job on the local cluster, interrupted three times after a checkpoint each:
/// 1. SIGUSR1 to the batch script (`scancel --signal=USR1 --batch`, as `--signal=B:USR1@120`
///    sends it before the time limit): the script passes it to the ranks and requeues the job;
/// 2. SIGTERM to the tasks (`scancel --signal=TERM`, a preemption with a grace time): the ranks
///    checkpoint and exit, the script requeues;
/// 3. `scontrol requeue` (SLURM sends SIGTERM to the script and the tasks and requeues itself).
///
/// Each start resumes from the newest checkpoint (`--resume auto`); the job finishes with the
/// weights of an uninterrupted 2-rank mpirun run. Before it, two jobs that fail for real (a config
/// that does not resolve; shards that do not exist, failing in the ranks) end without a requeue;
/// after it, a job interrupted again before it made progress ends, and the `mpirun` fallback
/// inside the allocation is interrupted, requeued and finishes.
#[test]
fn slurm_job_requeues_on_interruption_resumes_and_matches_an_uninterrupted_run() {
    let _exclusive = exclusive();
    let started = Instant::now();
    let root = tmp("job");
    let shards = synthetic_shards(&root);

    // The reference: the same training, uninterrupted, under plain mpirun.
    let reference = root.join("reference");
    let mut worker = Command::new(binary("mtrec-worker"));
    worker
        .arg("train")
        .arg("--config")
        .arg("configs/tiny.toml")
        .args(&train_args(&shards, &reference, &SETS)[1..]);
    run(&mut mpirun(2, worker), true);

    let cluster = Cluster::start();
    // start is idempotent
    assert!(cluster_script("start").status.success());

    // Jobs that fail for real end, with no requeue.
    for (name, set) in [
        ("bad-config", "train.batch_size=0".to_string()),
        ("no-shards", format!("data.shards={}", root.join("missing").display())),
    ] {
        let output = root.join(format!("{name}.out"));
        let run_dir = root.join(name);
        let mut args = train_args(&shards, &run_dir, &SETS);
        args.extend(["--set".to_string(), set]);
        let id = cluster.submit(&output, &[], &args);
        let (state, restarts) = wait_until_ended(&cluster, &id, &output);
        let text = read(&output);
        println!("=== job {id} ({name}): {state}, {restarts} restarts; its output:\n{text}");
        assert_eq!((state.as_str(), restarts), ("FAILED", 0), "{text}");
        assert!(text.contains("not requeueing"), "{text}");
        // and it stays ended
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(cluster.job(&id).map(|(s, _)| s).as_deref(), Some("FAILED"));
    }

    let output = root.join("mtrec.out");
    let run_dir = root.join("run");
    let id = cluster.submit(&output, &[], &train_args(&shards, &run_dir, &SETS));
    let log = || read(&output);
    let mut resumed_at = Vec::new();
    let interruptions: [&[&str]; 3] = [
        &["scancel", "--signal=USR1", "--batch", &id],
        &["scancel", "--signal=TERM", &id],
        &["scontrol", "requeue", &id],
    ];
    let mut last_step = 0;
    for (restarts, command) in interruptions.iter().enumerate() {
        let restarts = restarts as u32;
        // Running (again), with a checkpoint newer than where the last interruption stopped.
        wait_for(
            &format!("job {id} running (restart {restarts}) with a checkpoint past step {last_step}"),
            PHASE,
            || {
                cluster.assert_not_ended(&id, &output);
                let (state, r) = cluster.job(&id)?;
                assert!(r <= restarts, "job {id} was requeued without being interrupted:\n{}", log());
                let newest = newest_checkpoint(&run_dir)?;
                (state == "RUNNING" && r == restarts && newest > last_step).then_some(())
            },
            log,
        );
        assert!(
            newest_checkpoint(&run_dir).unwrap() < STEPS,
            "finished before it was interrupted:\n{}",
            log()
        );
        cluster.signal(command);
        // Requeued: SLURM_RESTART_COUNT grows.
        wait_for(
            &format!("job {id} requeued after {}", command.join(" ")),
            PHASE,
            || {
                cluster.assert_not_ended(&id, &output);
                cluster.job(&id).filter(|(_, r)| *r == restarts + 1)
            },
            log,
        );
        let step = wait_for(
            "the script's requeue decision",
            PHASE,
            || last_interrupted_step(&log()).filter(|s| *s > last_step),
            log,
        );
        println!("interrupted at step {step} by {}; requeued (restart {})", command.join(" "), restarts + 1);
        resumed_at.push(step);
        last_step = step;
    }
    let (state, restarts) = wait_until_ended(&cluster, &id, &output);
    let text = log();
    println!("=== job {id}: {state}, {restarts} restarts; its output across the requeues:\n{text}");
    assert_eq!((state.as_str(), restarts), ("COMPLETED", 3), "{text}");
    // Each start said which restart it was, and resumed from the checkpoint the last one wrote.
    for restart in 0..=3 {
        assert!(text.contains(&format!("start (restart {restart})")), "no start {restart}:\n{text}");
    }
    for step in &resumed_at {
        assert!(text.contains(&format!("(step {step})")), "no resume from step {step}:\n{text}");
    }
    assert!(text.contains("SIGUSR1: asking the ranks to checkpoint"), "{text}");
    assert!(text.contains("SIGTERM: asking the ranks to checkpoint"), "{text}");
    assert!(text.contains("training finished"), "{text}");
    let mpi = text.lines().find(|l| l.contains("] MPI: ")).expect("the script names its MPI launcher");
    println!("MPI launcher: {mpi}");
    assert!(
        mpi.contains("srun --mpi=pmix"),
        "srun --mpi=pmix works on this machine; the script fell back:\n{text}"
    );

    let file = format!("step-{STEPS:08}/model.safetensors");
    let diff = max_param_diff(&reference.join(&file), &run_dir.join(&file));
    // Same ranks, same data order, no dropout: resuming is exact (measured: 0).
    println!("requeued 3 times vs uninterrupted: max |difference| = {diff:.3e}");
    assert!(diff <= 1e-6, "the requeued run's weights differ by {diff:.3e}");

    // The requeue loop is bounded: interrupted again before it made any progress (here while
    // the restarted script probes MPI, before the ranks train), the job ends instead.
    let output = root.join("mtrec-bound.out");
    let run_dir = root.join("run-bound");
    let id = cluster.submit(&output, &[], &train_args(&shards, &run_dir, &SETS));
    let log = || read(&output);
    wait_for(
        &format!("job {id} with a checkpoint"),
        PHASE,
        || {
            cluster.assert_not_ended(&id, &output);
            newest_checkpoint(&run_dir).filter(|s| *s > 0)
        },
        log,
    );
    cluster.signal(&["scancel", "--signal=USR1", "--batch", &id]);
    wait_for(
        &format!("job {id} restarted"),
        PHASE,
        || log().contains("start (restart 1)").then_some(()),
        log,
    );
    cluster.signal(&["scancel", "--signal=USR1", "--batch", &id]);
    let (state, restarts) = wait_until_ended(&cluster, &id, &output);
    let text = log();
    println!(
        "=== job {id} (interrupted again before any progress): {state}, {restarts} restarts; its output:\n{text}"
    );
    assert_eq!((state.as_str(), restarts), ("FAILED", 1), "{text}");
    assert!(text.contains("before training started: nothing to checkpoint; not requeueing"), "{text}");

    // The mpirun fallback inside the allocation: interrupted once, requeued, finished.
    let output = root.join("mtrec-mpirun.out");
    let run_dir = root.join("run-mpirun");
    let sets = ["train.max_steps=40", "checkpoint.every=10", "model.dropout=0.0", "optim.eps=1e-3"];
    let id = cluster.submit(&output, &[("MTREC_MPI", "mpirun")], &train_args(&shards, &run_dir, &sets));
    let log = || read(&output);
    wait_for(
        &format!("job {id} (mpirun) with a checkpoint"),
        PHASE,
        || {
            cluster.assert_not_ended(&id, &output);
            newest_checkpoint(&run_dir).filter(|s| *s > 0)
        },
        log,
    );
    assert!(newest_checkpoint(&run_dir).unwrap() < 40, "finished before it was interrupted:\n{}", log());
    cluster.signal(&["scancel", "--signal=USR1", "--batch", &id]);
    let (state, restarts) = wait_until_ended(&cluster, &id, &output);
    let text = log();
    println!("=== job {id} (MTREC_MPI=mpirun): {state}, {restarts} restarts; its output:\n{text}");
    assert_eq!((state.as_str(), restarts), ("COMPLETED", 1), "{text}");
    assert!(text.contains("MPI: mpirun inside the allocation"), "{text}");
    assert!(run_dir.join("step-00000040/model.safetensors").is_file());

    // stop leaves nothing of the cluster running (its daemons name its folder on their command line)
    let folder = cluster.conf.parent().unwrap().parent().unwrap().to_path_buf();
    drop(cluster);
    let status = cluster_script("status");
    assert!(!status.status.success(), "the cluster still runs after stop");
    let left = Command::new("pgrep").arg("-af").arg(format!("{}/", folder.display())).output().unwrap();
    assert!(stdout(&left).trim().is_empty(), "left running after stop:\n{}", stdout(&left));
    println!("whole test: {:.0} s", started.elapsed().as_secs_f64());
}

/// The step a start resumed from: the last `resuming from DIR (step N)` line of the output.
fn last_resumed_step(output: &str) -> Option<u64> {
    output
        .lines()
        .rev()
        .find_map(|l| l.split("resuming from ").nth(1)?.split("(step ").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
}

/// The newest `"step":N` of a run's metrics.jsonl (0 before the first).
fn logged_step(run_dir: &Path) -> u64 {
    read(&run_dir.join("metrics.jsonl"))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// SLURM across nodes, for real: three local nodes (`launch/local-nodes.sh`: network + UTS
/// namespaces), one slurmd on each, jobs of 2 nodes x 2 tasks under `srun --mpi=pmix`:
/// 1. the time-limit warning (SIGUSR1 to the batch script): requeued, resumed, finished with
///    the weights of an uninterrupted 4-rank run;
/// 2. node 2 loses its power after a checkpoint (SIGKILL to every process on it, slurmd
///    included): the ranks on node 1 name the lost ranks, the script requeues the job without
///    node 2 (`ExcNodeList`), it starts again on node 1 and the spare node 3, resumes, and
///    finishes with the same weights;
/// 3. node 2 back with a local copy of the shards that differs: the job fails naming node 2,
///    with no requeue.
#[test]
fn slurm_job_across_nodes_requeues_without_a_lost_node() {
    let _exclusive = exclusive();
    let started = Instant::now();
    let root = tmp("nodes");
    let shards = synthetic_shards(&root);
    let sets = [
        "train.max_steps=40",
        "checkpoint.every=5",
        "checkpoint.keep=10",
        "log.every=1",
        "model.dropout=0.0",
        "optim.eps=1e-3",
        "dist.timeout_s=20",
    ];

    // The reference: 4 ranks on this machine, uninterrupted.
    let reference = root.join("reference");
    let mut worker = Command::new(binary("mtrec-worker"));
    worker
        .arg("train")
        .arg("--config")
        .arg("configs/tiny.toml")
        .args(&train_args(&shards, &reference, &sets)[1..]);
    run(&mut mpirun(4, worker), true);
    let file = "step-00000040/model.safetensors";

    let nodes = LocalNodes::start(3);
    let cluster = Cluster::start_nodes(2);

    // 1. SIGUSR1 to the batch script across two nodes.
    let output = root.join("usr1.out");
    let run_dir = root.join("usr1");
    let id = cluster.submit(&output, &[], &train_args(&shards, &run_dir, &sets));
    let log = || read(&output);
    wait_for(
        &format!("job {id} with a checkpoint"),
        PHASE,
        || {
            cluster.assert_not_ended(&id, &output);
            newest_checkpoint(&run_dir).filter(|s| *s > 0)
        },
        log,
    );
    let first_nodes = cluster.job_field(&id, "NodeList").unwrap_or_default();
    cluster.signal(&["scancel", "--signal=USR1", "--batch", &id]);
    let (state, restarts) = wait_until_ended(&cluster, &id, &output);
    let text = log();
    println!(
        "=== job {id} (SIGUSR1 across nodes {first_nodes}): {state}, {restarts} restarts; its output:\n{text}"
    );
    assert_eq!((state.as_str(), restarts), ("COMPLETED", 1), "{text}");
    assert!(text.contains("MPI: srun --mpi=pmix (4 tasks"), "{text}");
    for (rank, node) in [(0, "node1"), (1, "node1"), (2, "node2"), (3, "node2")] {
        let line = format!("rank {rank}/4 on {node}: local rank {}/2", rank % 2);
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    let diff = max_param_diff(&reference.join(file), &run_dir.join(file));
    println!("2 nodes x 2 tasks, requeued once, vs 4 ranks uninterrupted: max |difference| = {diff:.3e}");
    assert!(diff <= 1e-6, "the requeued run's weights differ by {diff:.3e}");

    // 2. Node 2 killed after a checkpoint.
    let output = root.join("node-lost.out");
    let run_dir = root.join("node-lost");
    let id = cluster.submit(&output, &[], &train_args(&shards, &run_dir, &sets));
    let log = || read(&output);
    wait_for(
        &format!("job {id} with the step-10 checkpoint"),
        PHASE,
        || {
            cluster.assert_not_ended(&id, &output);
            newest_checkpoint(&run_dir).filter(|s| *s >= 10)
        },
        log,
    );
    assert_eq!(cluster.job_field(&id, "NodeList").as_deref(), Some("node[1-2]"), "{}", log());
    let killed_after = logged_step(&run_dir);
    assert!(killed_after < 40, "finished before node 2 was killed:\n{}", log());
    let killed_at = Instant::now();
    nodes_script(&["kill", "node2"]);
    let requeued = wait_for(
        &format!("job {id} requeued after node 2 was lost"),
        PHASE,
        || cluster.job(&id).filter(|(_, r)| *r == 1).map(|_| killed_at.elapsed().as_secs_f64()),
        log,
    );
    wait_for(
        "a step after the restart",
        PHASE,
        || (log().contains("start (restart 1)") && logged_step(&run_dir) > killed_after).then_some(()),
        log,
    );
    let training_again = killed_at.elapsed().as_secs_f64();
    let second_nodes = cluster.job_field(&id, "NodeList").unwrap_or_default();
    let (state, restarts) = wait_until_ended(&cluster, &id, &output);
    let text = log();
    println!(
        "=== job {id} (node 2 killed after step {killed_after}): {state}, {restarts} restarts; its output:\n{text}"
    );
    assert_eq!((state.as_str(), restarts), ("COMPLETED", 1), "{text}");
    let said = text
        .lines()
        .find(|l| l.contains("lost rank"))
        .unwrap_or_else(|| panic!("no rank named the loss:\n{text}"));
    assert!(said.contains("on node2"), "{said}");
    assert!(text.contains("lost node(s) node2") && text.contains("excluding node2"), "{text}");
    assert!(!text.contains("cannot exclude"), "{text}");
    assert_eq!(cluster.job_field(&id, "ExcNodeList").as_deref(), Some("node2"));
    assert_eq!(second_nodes, "node[1,3]", "the restart ran on {second_nodes}:\n{text}");
    let resumed = last_resumed_step(&text).unwrap_or_else(|| panic!("the restart did not resume:\n{text}"));
    println!(
        "node 2 killed after step {killed_after}: requeued {requeued:.1} s after, training again on {second_nodes} \
         {training_again:.1} s after, resumed from step {resumed} ({} steps lost); {said}",
        killed_after - resumed
    );
    assert!(killed_after - resumed <= 5, "lost more than checkpoint.every steps");
    let diff = max_param_diff(&reference.join(file), &run_dir.join(file));
    println!(
        "node 2 lost, restarted on node 1 + node 3, vs 4 ranks uninterrupted: max |difference| = {diff:.3e}"
    );
    assert!(diff <= 1e-6, "the restarted run's weights differ by {diff:.3e}");

    // 3. Node 2 comes back with a local copy of the shards that differs: the job fails, naming
    //    node 2, and is not requeued.
    let copy = root.join("node2-disk/shards");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    run(Command::new("cp").arg("-a").arg(&shards).arg(&copy), true);
    let manifest = copy.join("manifest.json");
    std::fs::write(&manifest, read(&manifest) + "\n").unwrap();
    nodes_script(&["mount", "node2", copy.to_str().unwrap(), shards.to_str().unwrap()]);
    assert!(cluster_script("slurmd node2").status.success());
    let output = root.join("node-differs.out");
    let id = cluster.submit_with(
        &["--nodelist=node1,node2"],
        &output,
        &[],
        &train_args(&shards, &root.join("node-differs"), &sets),
    );
    let (state, restarts) = wait_until_ended(&cluster, &id, &output);
    let text = read(&output);
    println!(
        "=== job {id} (node 2's copy of the shards differs): {state}, {restarts} restarts; its output:\n{text}"
    );
    assert_eq!((state.as_str(), restarts), ("FAILED", 0), "{text}");
    assert!(text.contains("on node2: distributed: the shards folder"), "{text}");
    assert!(text.contains("not requeueing"), "{text}");

    drop(cluster);
    nodes.wait_empty(Some("mtrec-worker"), Duration::from_secs(30));
    println!("whole test: {:.0} s", started.elapsed().as_secs_f64());
}
