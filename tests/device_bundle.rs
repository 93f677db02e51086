//! `launch/device-bundle.sh` on this machine as on a bare GPU machine: the bundle of the built
//! binaries runs in a clean environment (`env -i`, another working directory, no venv on the
//! PATH), in a mount namespace where the system's OpenMPI, PMIx and every library the bundle
//! carries are hidden, so that only the bundle's copies can serve. Only PyTorch comes from the
//! machine (here the venv's, as a GPU machine's python3 would give it).
use mtrec_e2e::{repo_root, run, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The bundle of the test build's binaries (the script's default is the release build).
fn bundle(dir: &Path) -> String {
    let profile_dir = mtrec_e2e::binary("mtrec-worker").parent().unwrap().to_path_buf();
    let out = run(
        Command::new("bash")
            .arg(repo_root().join("launch/device-bundle.sh"))
            .arg(dir)
            .env("MTREC_BIN_DIR", profile_dir)
            .env("PYTHON", mtrec_e2e::python()),
        true,
    );
    stdout(&out)
}

/// Every path the bundle must replace: the system's OpenMPI and PMIx folders, its mpirun, and
/// the system's copy of each library in the bundle's `lib/` but those a machine with Python has
/// (the C++ runtime, zlib): files first, then folders (a file inside a hidden folder is gone).
fn system_copies(bundle: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["/usr/bin/orterun", "/usr/bin/orted"].iter().map(PathBuf::from).collect();
    for entry in std::fs::read_dir(bundle.join("lib")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if ["libstdc++", "libgcc_s", "libz."].iter().any(|kept| name.starts_with(kept)) {
            continue;
        }
        if let Ok(real) = Path::new("/usr/lib/x86_64-linux-gnu").join(&name).canonicalize() {
            files.push(real);
        }
    }
    files.sort();
    files.dedup();
    let folders = [
        "/usr/lib/x86_64-linux-gnu/openmpi",
        "/usr/lib/x86_64-linux-gnu/pmix2",
        "/usr/share/openmpi",
        "/etc/openmpi",
    ];
    files.into_iter().chain(folders.iter().map(PathBuf::from)).filter(|p| p.exists()).collect()
}

/// `script` in a clean environment and a private mount namespace that hides `hidden` (an empty
/// folder over a folder, /dev/null over a file), in `cwd`.
fn bare_machine(hidden: &[PathBuf], cwd: &Path, script: &str) -> std::process::Output {
    let empty = cwd.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut mounts = String::new();
    for path in hidden {
        let over = if path.is_dir() { empty.display().to_string() } else { "/dev/null".into() };
        mounts.push_str(&format!("mount --bind {over} {} && ", path.display()));
    }
    let python = mtrec_e2e::python();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &format!("{mounts}exec \"$0\" \"$@\"")])
        .args(["env", "-i", "PATH=/usr/bin:/bin", "HOME=/root", "OMPI_ALLOW_RUN_AS_ROOT=1"])
        .args(["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", &format!("PYTHON={}", python.display())])
        .args(["bash", "-c", script])
        .current_dir(cwd);
    run(&mut cmd, false)
}

#[test]
fn the_bundle_trains_over_its_own_mpirun_where_openmpi_is_absent() {
    let root = repo_root().join("target/tmp/device-bundle");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join("bundle");
    let said = bundle(&dir);
    println!("{said}");
    let size_mib: u64 = said
        .split(" MiB")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size in {said:?}"));
    assert!(size_mib < 60, "{said}");
    for binary in ["mtrec-worker", "mtrec-prep"] {
        let rpath =
            run(Command::new("patchelf").arg("--print-rpath").arg(dir.join("bin").join(binary)), true);
        assert_eq!(
            stdout(&rpath).trim(),
            "$ORIGIN/../lib",
            "{binary} looks for libraries on the build machine"
        );
    }

    let hidden = system_copies(&dir);
    assert!(hidden.iter().any(|p| p.ends_with("openmpi")), "{hidden:?}");
    let elsewhere = root.join("elsewhere");
    let b = dir.display();
    // The bundle's own model folder (no weights: a random bert-base-shaped encoder, cut to two
    // small layers here) on synthetic data made by the bundle's mtrec-prep.
    let tiny = format!(
        "--config {b}/configs/tiny.toml --set model.path={b}/model --set model.init=random --set model.layers=2 \
         --set model.hidden_size=64 --set model.heads=2 --set data.shards=shards --set dist.timeout_s=120"
    );
    let script = format!(
        "set -e; source {b}/env.sh; cd {cwd}; which mpirun; ldd {b}/bin/mtrec-worker | grep -E 'libmpi|libtorch_cpu'
         mtrec-worker doctor
         mtrec-prep synth --out mind --seed 1 --news 300 --users 60 --impressions 300
         mtrec-prep mind --train mind/train --dev mind/dev --model {b}/model --out shards
         mpirun -n 2 --oversubscribe mtrec-worker check-collectives {tiny}
         mpirun -n 2 --oversubscribe mtrec-worker train {tiny} --set train.run_dir=run --set train.max_steps=4",
        cwd = elsewhere.display()
    );
    std::fs::create_dir_all(&elsewhere).unwrap();
    let started = Instant::now();
    let out = bare_machine(&hidden, &elsewhere, &script);
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    println!(
        "{text}\n(ran in {:.1} s with {} system paths hidden)",
        started.elapsed().as_secs_f64(),
        hidden.len()
    );
    assert!(out.status.success(), "the bundle failed on a machine without OpenMPI:\n{text}");
    assert!(text.contains(&format!("{b}/bin/mpirun")), "{text}");
    assert!(text.contains(&format!("libmpi.so.40 => {b}/lib/libmpi.so.40")), "{text}");
    for rank in [0, 1] {
        assert!(
            text.contains(&format!("rank {rank} on ")) && text.contains("all_reduce_mean f32 ok (mpi, Cpu)"),
            "{text}"
        );
    }
    assert!(!text.contains("FAILED"), "{text}");
    // env.sh gives the worker the machine's NCCL (the nvidia-nccl wheel of PYTHON's torch).
    assert!(text.lines().any(|l| l.starts_with("NCCL") && !l.contains("unavailable")), "{text}");
    assert!(elsewhere.join("run/step-00000004/model.safetensors").is_file(), "{text}");
}
