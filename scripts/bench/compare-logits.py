#!/usr/bin/env python3
"""Bench tooling: colloquy's logits against llama.cpp's on the same GGUF, for a few chat
prompts rendered by the model's own template. Reports, over every prompt position, the largest
and the mean |difference| of the logits both engines put in their top 64, and the positions whose
argmax differs (with llama.cpp's margin between its first two there).

    python3 scripts/bench/compare-logits.py --model FILE.gguf --colloquy target/release/colloquy \\
        --llama-src SRC --llama-build BUILD [--threads 2]

SRC is the llama.cpp the llama-cpp-python 0.3.36 sdist vendors, BUILD its cmake build folder
(static libraries). The fast path's tolerances (tests/reference_logits.rs) are max 2.0, mean 0.25,
argmax differences only where llama.cpp's own margin is under 1.0.
"""

import argparse
import glob
import json
import os
import subprocess
import tempfile
from pathlib import Path

PROMPTS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Write a haiku about the sea."},
     {"role": "assistant", "content": "<think>\nfive, seven, five\n</think>\n\nWaves fold into foam"},
     {"role": "user", "content": "Another one, about mountains."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain recursion in one line."}],
    [{"role": "user", "content": "深度求索是什么？请用中文回答。"}],
]


def build(src, bld, out):
    libs = [p for pat in ["src/libllama.a", "ggml/src/libggml.a", "ggml/src/libggml-cpu.a",
                          "ggml/src/ggml-cpu/libggml-cpu.a", "ggml/src/libggml-base.a"]
            for p in glob.glob(f"{bld}/{pat}")]
    cmd = ["g++", "-O2", "-std=c++17", f"-I{src}/include", f"-I{src}/ggml/include",
           str(Path(__file__).with_name("llama-logits.cpp")), "-o", out, *libs, "-fopenmp", "-lpthread"]
    subprocess.run(cmd, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--colloquy", default="target/release/colloquy")
    ap.add_argument("--llama-src", required=True)
    ap.add_argument("--llama-build", required=True)
    ap.add_argument("--threads", default="2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "llama-logits")
        build(args.llama_src, args.llama_build, exe)
        prompts = []
        for msgs in PROMPTS:
            f = os.path.join(tmp, "m.json")
            Path(f).write_text(json.dumps(msgs))
            out = subprocess.run([args.colloquy, "template", "--model", args.model, "--messages", f, "--ids"],
                                 capture_output=True, text=True, check=True).stdout
            prompts.append(json.loads(out))
        stdin = "".join(" ".join(map(str, p)) + "\n" for p in prompts)
        theirs = subprocess.run([exe, args.model, args.threads], input=stdin, capture_output=True, text=True,
                                check=True).stdout.split("end\n")
    worst, total, count, flips = 0.0, 0.0, 0, []
    for n, (ids, block) in enumerate(zip(prompts, theirs)):
        ref = [dict((int(a), float(b)) for a, b in (kv.split(":") for kv in line.split()[1:]))
               for line in block.strip().splitlines()]
        out = subprocess.run([args.colloquy, "logits", "--model", args.model, "--ids", json.dumps(ids), "--top", "64",
                              "--threads", args.threads], capture_output=True, text=True, check=True).stdout
        ours = [dict((int(i), v) for i, v in json.loads(line)["top"]) for line in out.strip().splitlines()]
        assert len(ours) == len(ref) == len(ids), (len(ours), len(ref), len(ids))
        for pos, (o, r) in enumerate(zip(ours, ref)):
            for tid in set(o) & set(r):
                d = abs(o[tid] - r[tid])
                worst = max(worst, d)
                total += d
                count += 1
            ro = sorted(r.items(), key=lambda kv: (-kv[1], kv[0]))
            oo = sorted(o.items(), key=lambda kv: (-kv[1], kv[0]))
            if ro[0][0] != oo[0][0]:
                flips.append({"prompt": n, "pos": pos, "llama_margin": ro[0][1] - ro[1][1]})
    print(json.dumps({"model": os.path.basename(args.model), "prompts": len(prompts),
                      "positions": sum(len(p) for p in prompts), "compared_logits": count,
                      "max_abs_diff": round(worst, 4), "mean_abs_diff": round(total / max(count, 1), 5),
                      "argmax_differences": flips}))


if __name__ == "__main__":
    main()
