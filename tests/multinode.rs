//! Two nodes on one machine, for real: `launch/local-nodes.sh` makes node1 and node2 (network +
//! UTS namespaces on a bridge: their own addresses and hostnames), and OpenMPI runs the tiny
//! config across them through `launch/mpirun.sh --hostfile` (its rsh agent enters a node's
//! namespaces instead of ssh). One test runs every scenario in turn on the same two nodes and
//! stops them at the end, also when a scenario fails:
//! - 2 nodes x 2 ranks train equal to 1 rank with the same global batch, each rank on its node
//!   with local ranks 0 and 1, and the step time against 1 node x 4 ranks;
//! - node 2 loses power (SIGKILL to every process on it) or its link (a partition): the job
//!   ends within `dist.timeout_s` + 30 s, a survivor names the lost ranks and their host, and
//!   no process is left on either node;
//! - `--max-restarts`: node 2 killed after a checkpoint, the job restarts by itself, resumes and
//!   finishes with the weights of an uninterrupted run; a config error on node 2 is not retried;
//! - node-local disks (`local-nodes.sh mount`): node 2 trains on its own equal copy of the
//!   shards, a copy that differs is refused naming node 2, and a run directory node 2 does not
//!   share stops the job at its start, naming node 2 and the path.
use mtrec_e2e::{
    LocalNodes, binary, max_param_diff, mpirun, nodes_script, repo_root, run, stdout, synthetic_shards,
    tiny_args, tiny_worker,
};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

const TIMEOUT_S: u64 = 20;
/// The bound: the job ends within dist.timeout_s + 30 s of the loss.
const ENDS_WITHIN: Duration = Duration::from_secs(TIMEOUT_S + 30);
/// The seconds without an answer after which `launch/mpirun.sh` has the nodes' remote shell end
/// a session (as ssh's keepalive does): 10 s after the ranks' liveness link (half of
/// `dist.timeout_s`) has named what was lost.
const SESSION_ENDS_S: u64 = TIMEOUT_S / 2 + 10;

/// `launch/mpirun.sh --hostfile (node1, node2: 2 slots each) [--max-restarts N] 4 train ...`.
fn across_nodes(
    nodes: &LocalNodes,
    root: &Path,
    restarts: u32,
    shards: &Path,
    run_dir: &Path,
    sets: &[&str],
) -> Command {
    let hostfile = root.join("hosts");
    std::fs::write(&hostfile, "node1 slots=2\nnode2 slots=2\n").unwrap();
    let session = repo_root()
        .join(format!("target/tmp/ompi/multinode-{}", run_dir.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&session).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("launch/mpirun.sh"))
        .arg("--hostfile")
        .arg(&hostfile)
        .args(["--max-restarts", &restarts.to_string(), "4"])
        .args(tiny_args("train", shards, run_dir, sets))
        .env("MTREC_WORKER", binary("mtrec-worker"))
        .env("MTREC_IFACE", &nodes.subnet)
        .env("MTREC_RSH_AGENT", format!("{} rsh", repo_root().join("launch/local-nodes.sh").display()))
        .env_remove("MTREC_NODES_ALIVE_MAX")
        .env("OMPI_MCA_orte_tmpdir_base", session)
        .env_remove("MTREC_FAULT")
        .current_dir(repo_root());
    cmd
}

/// A launch running in the background, its stdout and stderr going to one log file (no pipe
/// to fill while the test waits).
struct Job {
    child: Child,
    log: PathBuf,
}

/// Starts `cmd` as the leader of a process group of its own, so that [`finish`] can end all of
/// it (mpirun and its agents included) when it runs too long.
fn spawn(mut cmd: Command, log: PathBuf) -> Job {
    let file = std::fs::File::create(&log).unwrap();
    let child = cmd
        .process_group(0)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    Job { child, log }
}

/// Waits for `job` at most `limit` after `since` (its process group killed and reported past
/// it); its exit status, output and the seconds since `since`.
fn finish(mut job: Job, limit: Duration, since: Instant) -> (ExitStatus, String, f64) {
    let status = loop {
        if let Some(status) = job.child.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > limit {
            run(Command::new("kill").args(["-KILL", "--", &format!("-{}", job.child.id())]), false);
            job.child.wait().unwrap();
            panic!("still running after {limit:?}:\n{}", std::fs::read_to_string(&job.log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(&job.log).unwrap(), since.elapsed().as_secs_f64())
}

/// The newest `"step":N` of a run's metrics.jsonl (0 before the first).
fn logged_step(run_dir: &Path) -> u64 {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
        .max()
        .unwrap_or(0)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// "trained N steps in X s": the training seconds of a finished run's output.
fn trained_seconds(output: &str) -> f64 {
    let line =
        output.lines().find(|l| l.starts_with("trained ")).unwrap_or_else(|| panic!("no summary:\n{output}"));
    line.split(" in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
}

fn checkpoint(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(format!("step-{step:08}/model.safetensors"))
}

#[test]
fn two_local_nodes_train_lose_a_node_and_restart() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("multinode");
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    let shards = synthetic_shards(&root);
    let nodes = LocalNodes::start(2);
    let common =
        ["train.max_steps=30", "checkpoint.every=5", "checkpoint.keep=10", "log.every=1", "optim.eps=1e-3"];
    let timeout = format!("dist.timeout_s={TIMEOUT_S}");

    // 1 rank with the whole batch: the reference.
    let one = root.join("one-rank");
    run(&mut tiny_worker("train", &shards, &one, &common), true);
    let moved = max_param_diff(&checkpoint(&one, 30), &checkpoint(&one, 20));
    assert!(moved > 1e-4, "training did not move the parameters ({moved:.3e})");
    let within_floor = |run_dir: &Path, what: &str| {
        let diff = max_param_diff(&checkpoint(&one, 30), &checkpoint(run_dir, 30));
        println!(
            "{what}: max |1 rank - 2 nodes x 2 ranks| = {diff:.3e}; steps 20-30 moved them up to {moved:.3e}"
        );
        assert!(diff <= 2e-2 * moved, "{what}: parameters differ by {diff:.3e}");
    };

    // 2 nodes x 2 ranks, against 1 rank and against 1 node x 4 ranks.
    let two_nodes = root.join("two-nodes");
    let (status, output, _) = finish(
        spawn(across_nodes(&nodes, &root, 0, &shards, &two_nodes, &common), root.join("two-nodes.log")),
        Duration::from_secs(300),
        Instant::now(),
    );
    assert!(status.success(), "{output}");
    for (rank, node, local) in [(0, "node1", 0), (1, "node1", 1), (2, "node2", 0), (3, "node2", 1)] {
        let line = format!("rank {rank}/4 on {node}: local rank {local}/2, device Cpu");
        assert!(output.contains(&line), "no {line:?} in:\n{output}");
    }
    within_floor(&two_nodes, "2 nodes x 2 ranks");
    let one_node = root.join("one-node");
    let local = run(&mut mpirun(4, tiny_worker("train", &shards, &one_node, &common)), true);
    let (tcp, shm) = (trained_seconds(&output), trained_seconds(&stdout(&local)));
    println!(
        "step time, 2 nodes x 2 ranks (TCP) / 1 node x 4 ranks (shared memory): {tcp:.1} s / {shm:.1} s = {:.2}",
        tcp / shm
    );

    // Node 2 loses its power, then its link: the job ends, a survivor says what was lost.
    for (loss, action) in [("killed", "kill"), ("cut off", "cut")] {
        let run_dir = root.join(format!("lost-{action}"));
        let sets = ["train.max_steps=100000", "checkpoint.every=5", "log.every=1", timeout.as_str()];
        let child = spawn(
            across_nodes(&nodes, &root, 0, &shards, &run_dir, &sets),
            root.join(format!("lost-{action}.log")),
        );
        wait_until("step 3 logged", Duration::from_secs(120), || logged_step(&run_dir) >= 3);
        let lost_at = Instant::now();
        nodes_script(&[action, "node2"]);
        // When node 2's ranks are gone: cut off, they end themselves (their watchdog), before
        // the remote shell gives the session up.
        let node2_ranks_gone = std::thread::scope(|scope| {
            let gone = scope.spawn(|| {
                while nodes.running("node2", "mtrec-worker") > 0 && lost_at.elapsed() < ENDS_WITHIN {
                    std::thread::sleep(Duration::from_millis(200));
                }
                lost_at.elapsed().as_secs_f64()
            });
            let ended = finish(child, ENDS_WITHIN, lost_at);
            (ended, gone.join().unwrap())
        });
        let ((status, output, seconds), ranks_gone) = node2_ranks_gone;
        assert!(!status.success(), "{output}");
        let said = output
            .lines()
            .find(|l| l.contains("lost rank"))
            .unwrap_or_else(|| panic!("no survivor named the lost ranks:\n{output}"));
        assert!(said.contains("on node2") && said.contains("on node1: lost"), "{said}");
        nodes.wait_empty(None, ENDS_WITHIN.saturating_sub(lost_at.elapsed()) + Duration::from_secs(1));
        println!(
            "node 2 {loss}: its ranks gone {ranks_gone:.1} s after, the job ended {seconds:.1} s after (exit {:?}), \
             no process left on the nodes {:.1} s after: {said}",
            status.code(),
            lost_at.elapsed().as_secs_f64()
        );
        if action == "cut" {
            assert!(ranks_gone < SESSION_ENDS_S as f64, "node 2's ranks did not end themselves: {output}");
        }
        if action == "cut" {
            nodes_script(&["heal", "node2"]);
        }
    }

    // --max-restarts: node 2 killed after the first checkpoint; the job restarts and finishes.
    let restarted = root.join("restarted");
    let started = Instant::now();
    let child = spawn(
        across_nodes(&nodes, &root, 2, &shards, &restarted, &[&common[..], &[timeout.as_str()]].concat()),
        root.join("restarted.log"),
    );
    wait_until("checkpoint step-00000010", Duration::from_secs(180), || checkpoint(&restarted, 10).is_file());
    let killed_after = logged_step(&restarted);
    let killed_at = Instant::now();
    nodes_script(&["kill", "node2"]);
    // Restart time: from the loss to the first step the restarted job logs.
    wait_until("a step after the restart", Duration::from_secs(240), || {
        logged_step(&restarted) > killed_after
    });
    let back_after = killed_at.elapsed().as_secs_f64();
    let (status, output, seconds) = finish(child, Duration::from_secs(400), started);
    assert!(status.success(), "{output}");
    let restart = output
        .lines()
        .find(|l| l.contains("restart 1/2 after exit"))
        .unwrap_or_else(|| panic!("no restart:\n{output}"));
    let resumed: u64 = restart.split("step-").nth(1).unwrap()[..8].parse().unwrap();
    println!(
        "killed after step {killed_after}; {restart}; {} steps lost; training again {back_after:.1} s after \
         the loss; finished in {seconds:.1} s",
        killed_after - resumed
    );
    assert!(killed_after - resumed <= 5, "lost more than checkpoint.every steps: {restart}");
    assert!(!output.contains("restart 2/2"), "{output}");
    within_floor(&restarted, &format!("killed after step {killed_after}, restarted"));

    // Node-local disks: node 2 reads its own copy of the shards (a bind mount only it sees).
    let disk = root.join("node2-disk");
    let copy = disk.join("shards");
    std::fs::create_dir_all(&disk).unwrap();
    run(Command::new("cp").arg("-a").arg(&shards).arg(&copy), true);
    std::fs::write(copy.join("ON-NODE2"), "node 2's own copy\n").unwrap();
    nodes_script(&["mount", "node2", copy.to_str().unwrap(), shards.to_str().unwrap()]);
    let seen = run(
        Command::new("bash")
            .arg(repo_root().join("launch/local-nodes.sh"))
            .args(["exec", "node2", "test", "-f"])
            .arg(shards.join("ON-NODE2")),
        false,
    );
    assert!(seen.status.success(), "node 2 does not see its own copy");
    assert!(!shards.join("ON-NODE2").exists(), "the copy is not node 2's alone");
    let short = ["train.max_steps=3", "checkpoint.every=3", "log.every=1", "optim.eps=1e-3"];
    let local_ok = root.join("local-shards");
    let (status, output, _) = finish(
        spawn(across_nodes(&nodes, &root, 0, &shards, &local_ok, &short), root.join("local-shards.log")),
        Duration::from_secs(120),
        Instant::now(),
    );
    assert!(status.success(), "an equal node-local copy must train:\n{output}");
    // A copy that differs (its manifest): refused by node 2's ranks, naming their node.
    let manifest = copy.join("manifest.json");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push('\n');
    std::fs::write(&manifest, text).unwrap();
    let local_bad = root.join("local-shards-differ");
    let (status, output, _) = finish(
        spawn(
            across_nodes(&nodes, &root, 2, &shards, &local_bad, &short),
            root.join("local-shards-differ.log"),
        ),
        Duration::from_secs(120),
        Instant::now(),
    );
    let said = output
        .lines()
        .find(|l| l.contains("on node2:") && l.contains("differ"))
        .unwrap_or_else(|| panic!("node 2's ranks did not name the different copy:\n{output}"));
    println!("node 2 with a different copy of the shards: exit {:?}: {said}", status.code());
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("not restarting (0 restart(s) so far)"), "{output}");
    nodes_script(&["unmount", "node2"]);
    // A run directory node 2 does not share: the job stops at its start, naming node 2 and the path.
    let unshared = root.join("unshared-run");
    let node2_run = disk.join("run");
    std::fs::create_dir_all(&unshared).unwrap();
    std::fs::create_dir_all(&node2_run).unwrap();
    nodes_script(&["mount", "node2", node2_run.to_str().unwrap(), unshared.to_str().unwrap()]);
    let (status, output, _) = finish(
        spawn(across_nodes(&nodes, &root, 2, &shards, &unshared, &short), root.join("unshared-run.log")),
        Duration::from_secs(120),
        Instant::now(),
    );
    nodes_script(&["unmount", "node2"]);
    let said = output
        .lines()
        .find(|l| l.contains("on node2:") && l.contains("is not the folder rank 0 writes to"))
        .unwrap_or_else(|| panic!("node 2's ranks did not name the unshared run directory:\n{output}"));
    println!("node 2 with a run directory of its own: exit {:?}: {said}", status.code());
    assert!(said.contains(&unshared.display().to_string()), "{said}");
    assert_eq!(status.code(), Some(1), "{output}");
    nodes.wait_empty(None, Duration::from_secs(30));

    // A config error on node 2 only: the job fails at once and is not restarted.
    std::fs::write(repo_root().join("target/local-nodes/node2.env"), "MTREC_FAULT=bogus\n").unwrap();
    let bad = root.join("config-error");
    let (status, output, _) = finish(
        spawn(across_nodes(&nodes, &root, 2, &shards, &bad, &common), root.join("config-error.log")),
        Duration::from_secs(120),
        Instant::now(),
    );
    std::fs::remove_file(repo_root().join("target/local-nodes/node2.env")).unwrap();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("on node2: config: MTREC_FAULT=\"bogus\""), "{output}");
    assert!(output.contains("not restarting (0 restart(s) so far)"), "{output}");
    nodes.wait_empty(None, Duration::from_secs(30));
}
