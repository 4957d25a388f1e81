#!/usr/bin/env bash
# Bench-only: SmolLM2 pp512/tg128 on 2 threads with colloquy and llama.cpp's
# llama-bench, idle and then with four busy loops sharing the cores, in rounds.
# Usage: scripts/bench/contention.sh [COLLOQUY_BINARY...] (default: target/release/colloquy).
set -uo pipefail
cd "$(dirname "$0")/../.."
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=(target/release/colloquy)
M="${COLLOQUY_HOME:-$HOME/.cache/colloquy}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LB=target/llama.cpp/bin/llama-bench
[ -x "$LB" ] || { echo "build llama-bench first: bash scripts/bench/build-llama-cpp.sh" >&2; exit 1; }
round() {
  for b in "${BINS[@]}"; do
    "$b" bench --model smollm2 -t 2 --reps 5 --depth 0 -p 512 -n 128 --json 2>/dev/null | grep tps | sed "s|^|$1 $b |"
  done
  "$LB" -m "$M" -t 2 -p 512 -n 128 -r 5 -o jsonl 2>/dev/null | sed "s|^|$1 llama.cpp |"
}
date -u
for _ in 1 2; do round idle; done
hogs=()
for _ in 1 2 3 4; do timeout 600 sh -c 'while :; do :; done' & hogs+=($!); done
sleep 2
uptime
for _ in 1 2; do round busy; done
uptime
kill "${hogs[@]}" 2>/dev/null
date -u
