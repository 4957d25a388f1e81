#!/usr/bin/env bash
# Bench-only: builds llama.cpp's own tools (llama-bench, llama-batched-bench,
# llama-server, llama-quantize) from the llama.cpp that the llama-cpp-python 0.3.36 sdist
# vendors, with GGML_NATIVE=ON, into target/llama.cpp/bin. Tests never use it.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="$PWD/target/llama.cpp"
VERSION=0.3.36
if [ -x "$OUT/bin/llama-bench" ] && [ -x "$OUT/bin/llama-batched-bench" ] && [ -x "$OUT/bin/llama-server" ] \
  && [ -x "$OUT/bin/llama-quantize" ]; then
  echo "$OUT/bin"
  exit 0
fi
command -v cmake >/dev/null || (apt-get update -qq && apt-get install -y -qq cmake) >&2
mkdir -p "$OUT/src"
if [ ! -d "$OUT/src/llama-cpp-python-$VERSION" ]; then
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$OUT/src" >&2
  tar -xzf "$OUT/src/llama_cpp_python-$VERSION.tar.gz" -C "$OUT/src" 2>/dev/null \
    || tar -xzf "$OUT/src"/llama_cpp_python-*.tar.gz -C "$OUT/src"
  mv "$OUT/src"/llama_cpp_python-"$VERSION" "$OUT/src/llama-cpp-python-$VERSION" 2>/dev/null || true
fi
SRC="$OUT/src/llama-cpp-python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$OUT/build" -j"${CARGO_BUILD_JOBS:-2}" --target llama-bench llama-batched-bench llama-server llama-quantize >&2
mkdir -p "$OUT/bin"
cp "$OUT/build/bin/llama-bench" "$OUT/build/bin/llama-batched-bench" "$OUT/build/bin/llama-server" \
  "$OUT/build/bin/llama-quantize" "$OUT/bin/"
echo "$OUT/bin"
