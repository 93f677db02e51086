//! `launch/gpu-check.sh` in its CPU mode (`GPU_CHECK_DEVICE=cpu`): the GPU check runs between the
//! rare moments a GPU is lent, so CI runs the same script on the CPU at small sizes and it cannot
//! rot. Every section must PASS, or SKIP saying why (what only a GPU can show); report.md starts
//! with its header and results.json parses. The model folder has no weights, as the device
//! bundle's (`launch/device-bundle.sh`): every config of the check initialises at random.
use mtrec_e2e::{binary, model_dir, python, repo_root};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The sections the script must report, in its order.
const SECTIONS: [&str; 16] = [
    "preflight",
    "data",
    "cpu-vs-device",
    "nccl-one-gpu",
    "two-ranks-one-gpu",
    "resume",
    "train-f32",
    "train-bf16",
    "train-nrms",
    "train-lstur",
    "train-amf",
    "train-layer-cache",
    "train-vector-cache",
    "bench-bert-base",
    "eval-mind-small",
    "bench-mind-caches",
];

/// Loose: measured about 3 minutes on the 2-core machine; a hung command is ended by the
/// script's own timeouts well before this.
const LIMIT: Duration = Duration::from_secs(15 * 60);

#[test]
fn gpu_check_passes_in_cpu_mode() {
    // Under target/, replaced by the next run and left for inspection after a failure.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-check");
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    let (out, work, model) = (root.join("out"), root.join("work"), root.join("model"));
    std::fs::create_dir_all(&model).unwrap();
    // The tokenizer and config.json of all-MiniLM-L6-v2, without model.safetensors.
    for file in
        ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]
    {
        let from = model_dir().join(file);
        if from.is_file() {
            std::fs::copy(&from, model.join(file)).unwrap();
        }
    }
    let bin_dir = binary("mtrec-worker").parent().unwrap().to_path_buf();
    assert!(binary("mtrec-prep").is_file());

    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(repo_root().join("launch/gpu-check.sh"))
        .arg(&out)
        .env("GPU_CHECK_DEVICE", "cpu")
        .env("MTREC_BIN_DIR", &bin_dir)
        .env("MTREC_MODEL", &model)
        .env("PYTHON", python())
        .env("GPU_CHECK_WORK", &work)
        .env_remove("GPU_CHECK_ONLY")
        .env_remove("GPU_CHECK_BUDGET_S")
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a script past the limit ends with everything it started.
        .process_group(0)
        .spawn()
        .expect("bash launch/gpu-check.sh");
    // Read the output on threads: a full pipe must not stall the script.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!("gpu-check.sh still ran after {LIMIT:?}; its work folder: {}", work.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let seconds = started.elapsed().as_secs_f64();
    let log = format!("{}{}", stdout.join().unwrap(), stderr.join().unwrap());
    println!("{log}\ngpu-check.sh in cpu mode: {seconds:.0} s, exit {status}");

    let report = std::fs::read_to_string(out.join("report.md"))
        .unwrap_or_else(|e| panic!("no report.md ({e}); the script said:\n{log}"));
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json"))
            .unwrap_or_else(|e| panic!("no results.json ({e}); the script said:\n{log}")),
    )
    .unwrap_or_else(|e| panic!("results.json does not parse: {e}"));
    assert!(status.success(), "gpu-check.sh exited {status}:\n{log}\n{report}");

    // The header first: date, command, GPU, PyTorch.
    assert!(
        report.starts_with("# GPU check\n\n- Date: "),
        "report.md does not start with its header:\n{report}"
    );
    let header: Vec<&str> = report.lines().take(10).collect();
    for field in ["- Command: ", "- GPU: ", "- PyTorch: 2."] {
        assert!(header.iter().any(|l| l.starts_with(field)), "no {field:?} in the header:\n{report}");
    }
    assert_eq!(results["device"], "cpu");
    assert_eq!(results["status"], "PASS", "{results:#}");
    assert!(out.join("logs.tar.gz").is_file());

    let sections = results["sections"].as_array().expect("sections");
    let names: Vec<&str> = sections.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, SECTIONS, "the sections in results.json");
    for section in sections {
        let (name, status, reason) =
            (&section["name"], section["status"].as_str().unwrap(), section["reason"].as_str().unwrap());
        assert!(section["seconds"].is_u64() && section["figures"].is_object(), "{section:#}");
        assert!(!section["criterion"].as_str().unwrap().is_empty(), "{name}: no criterion");
        match status {
            "PASS" => {}
            "SKIP" => assert!(reason.len() > 10, "{name} skipped without saying why: {section:#}"),
            _ => panic!("{name} {status}: {reason}\n{}", section["log_tail"].as_str().unwrap()),
        }
        assert!(report.contains(&format!("\n## {}: ", name.as_str().unwrap())), "{name} not in report.md");
    }
    let section = |name: &str| sections.iter().find(|s| s["name"] == name).unwrap();
    // What only a GPU can show is skipped on the CPU, and only that.
    let skipped: Vec<&str> =
        sections.iter().filter(|s| s["status"] == "SKIP").map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(skipped, ["two-ranks-one-gpu"]);
    // On the CPU runs repeat exactly: the resumed run is bit-exact, the two evaluations equal.
    let figure = |s: &str, f: &str| section(s)["figures"][f].as_f64().unwrap_or_else(|| panic!("{s}: {f}"));
    assert_eq!(figure("resume", "run_to_run_max_diff"), 0.0);
    assert_eq!(figure("resume", "resumed_vs_uninterrupted_max_diff"), 0.0);
    assert_eq!(figure("resume", "sigterm_exit"), 75.0);
    assert_eq!(figure("cpu-vs-device", "auc_f32_abs_diff"), 0.0);
    assert_eq!(figure("cpu-vs-device", "step_loss_max_rel_diff"), 0.0);
    for bench in ["bench-bert-base", "bench-mind-caches"] {
        assert!(bench_has_rate(section(bench)), "{bench}: no samples/s figure: {:#}", section(bench));
    }
}

/// Whether a bench section recorded some samples/s figure (its row names follow the bench's).
fn bench_has_rate(section: &serde_json::Value) -> bool {
    section["figures"]
        .as_object()
        .unwrap()
        .iter()
        .any(|(k, v)| k.starts_with("samples_per_s:") && v.as_f64().is_some_and(|x| x > 0.0))
}
