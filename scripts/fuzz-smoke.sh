#!/usr/bin/env bash
# A short cargo-fuzz run of every fuzz target (seconds each), seeded with the
# headers of the real models. The stable toolchain runs cargo-fuzz through
# RUSTC_BOOTSTRAP, since no nightly toolchain can be installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-15}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install -q -j2 cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
cache="${COLLOQUY_HOME:-$HOME/.cache/colloquy}/models"
for target in $(cargo fuzz list); do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  if [ "$target" = gguf ]; then
    # Seeds: the first 64 KiB of each cached model (the header and tensor table).
    for f in "$cache"/*.gguf; do
      [ -e "$f" ] && head -c 65536 "$f" > "$corpus/seed-$(basename "$f").bin"
    done
  fi
  if [ "$target" = openai_request ]; then
    # Seeds: requests as clients send them.
    printf '%s' '{"model":"smollm2","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0.7,"top_p":0.9,"max_tokens":16,"stop":["\n"],"seed":1,"logprobs":true,"top_logprobs":2,"stream":true,"stream_options":{"include_usage":true},"session_id":"abc"}' > "$corpus/seed-chat.json"
    printf '%s' '{"messages":[{"role":"user","content":"w?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},{"role":"tool","tool_call_id":"call_1","content":"3"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"x":{"type":"integer"}}}}}],"tool_choice":{"type":"function","function":{"name":"f"}},"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{"type":"object"}}}}' > "$corpus/seed-tools.json"
    printf '%s' '<tool_call>
{"name": "f", "arguments": {"x": 1}}
</tool_call>' > "$corpus/seed-call.txt"
    printf '%s' '{"prompt":["Once upon"],"max_tokens":8,"logprobs":2,"echo":true,"presence_penalty":0.5}' > "$corpus/seed-text.json"
  fi
  if [ "$target" = model_text ]; then
    printf '%s' '<think>
Let me add.
</think>

4' > "$corpus/seed-think.txt"
    printf '%s' 'bartowski/Qwen2.5-1.5B-GGUF@main/sub/Qwen2.5-1.5B-Q4_K_M.gguf' > "$corpus/seed-hf.txt"
    printf '%s' 'model-00001-of-00003.gguf' > "$corpus/seed-shard.txt"
  fi
  echo "fuzzing $target for ${SECONDS_PER_TARGET}s"
  # -timeout: an input that takes seconds to refuse is a bug too (a fuzzer once
  # found a header that took 22 s).
  CARGO_BUILD_JOBS=2 cargo fuzz run --sanitizer none "$target" "$corpus" -- -max_total_time="$SECONDS_PER_TARGET" \
    -rss_limit_mb=4096 -max_len=262144 -timeout=10
done
