#!/usr/bin/env bash
# Bench-only: a SYNTHETIC qwen2 model at Qwen2.5-1.5B's shape (28 layers, hidden 1536, 12 heads,
# 2 KV heads, FFN 8960) with random weights and the DeepSeek-R1 header's vocabulary and template,
# quantized to Q4_K_M (or $QUANT, any llama-quantize type name such as IQ4_XS) by llama.cpp's own
# llama-quantize. Cached under $COLLOQUY_HOME/synthetic/ (default ~/.cache/colloquy/synthetic/);
# never committed. Prints the file's path.
#
# Usage: [QUANT=IQ4_XS] bash scripts/bench/synthetic-1.5b.sh [LLAMA_BIN_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${COLLOQUY_HOME:-$HOME/.cache/colloquy}/synthetic"
QUANT="${QUANT:-Q4_K_M}"
Q="$CACHE/synthetic-qwen2-1.5b-r1-vocab-$QUANT.gguf"
if [ -f "$Q" ]; then
  echo "$Q"
  exit 0
fi
mkdir -p "$CACHE"
BIN="${1:-$(bash scripts/bench/build-llama-cpp.sh)}"
HEADER="$(cargo run -q --release -p colloquy-cli -- pull r1-header)"
F16="$CACHE/synthetic-qwen2-1.5b-r1-vocab-F16.gguf"
cargo run -q --release -p colloquy-engine --example synthetic_qwen2 -- "$HEADER" 1.5b "$F16" f16 >&2
"$BIN/llama-quantize" "$F16" "$Q" "$QUANT" 2 >&2
rm -f "$F16"
echo "$Q"
