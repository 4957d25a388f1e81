#!/usr/bin/env bash
# Bench-only: decode against the memory bound. For each model and thread
# count, in rounds: `colloquy bench` (which probes the bandwidth and prints
# each decode figure's bound and fraction) and llama.cpp's own llama-bench on
# the same GGUF, interleaved; then the same with one busy loop per core beside
# each engine (`--contend`, and the same busy loops around llama-bench).
# Usage: scripts/bench/decode-bound.sh [ROUNDS] [COLLOQUY_BINARY]
set -uo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-3}"
BIN="${2:-target/release/colloquy}"
DIR="${COLLOQUY_HOME:-$HOME/.cache/colloquy}/models"
LB=target/llama.cpp/bin/llama-bench
[ -x "$LB" ] || { echo "build llama-bench first: bash scripts/bench/build-llama-cpp.sh" >&2; exit 1; }
CORES=$(nproc)
llama() { # model-file threads label
  "$LB" -m "$DIR/$1" -t "$2" -p 0 -n 128 -r 5 -o jsonl 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l); print(json.dumps({"engine":"llama.cpp","label":sys.argv[1],"threads":d["n_threads"],"test":"tg%d"%d["n_gen"],"tps":d["avg_ts"],"spread":d["stddev_ts"]}))' "$3"
}
ours() { # model threads label [contend]
  "$BIN" bench --model "$1" -t "$2" -p 0 -n 128 --depth 0 --reps 5 --contend "${4:-0}" --json 2>/dev/null \
    | sed "s|^{|{\"engine\":\"colloquy\",\"label\":\"$3\",|"
}
date -u
for r in $(seq "$ROUNDS"); do
  for m in "smollm2 SmolLM2-135M-Instruct.Q4_1.gguf" "gemma3 gemma-3-270m-q4_k_m.gguf"; do
    set -- $m
    for t in 1 2; do
      ours "$1" "$t" quiet
      llama "$2" "$t" quiet
    done
    ours "$1" 2 contended "$CORES"
    hogs=()
    for _ in $(seq "$CORES"); do sh -c 'while :; do :; done' & hogs+=($!); done
    llama "$2" 2 contended
    kill "${hogs[@]}" 2>/dev/null; wait "${hogs[@]}" 2>/dev/null
  done
done
date -u
