#!/usr/bin/env python3
"""Prints the dependency graph of a crate's top-level modules (from the
`crate::<module>` paths in its sources) as Mermaid, and exits 1 if it has a
cycle. Usage: scripts/module-graph.py crates/colloquy/src [more crate dirs]"""
import os
import re
import sys


def modules(src):
    """Top-level module name -> list of its files."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            top = rel.split(os.sep)[0]
            name = top[:-3] if top.endswith(".rs") else top
            if name in ("lib", "main", "mod"):
                continue
            mods.setdefault(name, []).append(os.path.join(root, f))
    return mods


def graph(src):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for m, files in mods.items():
        for path in files:
            text = open(path, encoding="utf-8").read()
            # Only code: drop line comments (doc comments name other modules freely).
            code = "\n".join(line.split("//")[0] for line in text.splitlines())
            for dep in re.findall(r"crate::([a-z_][a-z0-9_]*)", code):
                if dep != m and dep in mods:
                    edges[m].add(dep)
    return edges


def cycle(edges):
    state = {}

    def visit(n, path):
        state[n] = 1
        for d in sorted(edges[n]):
            if state.get(d) == 1:
                return path + [n, d]
            if d not in state:
                found = visit(d, path + [n])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n, [])
            if found:
                return found
    return None


def sibling_graphs(src):
    """For each folder module, its files' `super::<sibling>` edges."""
    out = {}
    for root, _, files in os.walk(src):
        if os.path.abspath(root) == os.path.abspath(src):
            continue
        names = {f[:-3] for f in files if f.endswith(".rs") and f != "mod.rs"}
        edges = {n: set() for n in names}
        for n in names:
            text = open(os.path.join(root, n + ".rs"), encoding="utf-8").read()
            code = "\n".join(line.split("//")[0] for line in text.splitlines())
            edges[n] = {d for d in re.findall(r"super::([a-z_][a-z0-9_]*)", code) if d in names and d != n}
        out[os.path.relpath(root, src)] = edges
    return out


failed = False
for src in sys.argv[1:]:
    for folder, edges in sibling_graphs(src).items():
        c = cycle(edges)
        if c:
            print(f"cycle in {src}/{folder}: {' -> '.join(c)}", file=sys.stderr)
            failed = True
    edges = graph(src)
    crate = os.path.basename(os.path.dirname(os.path.abspath(src))).replace("-", "_")
    print(f"```mermaid\ngraph BT\n  subgraph {crate}")
    for m in sorted(edges):
        for d in sorted(edges[m]):
            print(f"    {crate}_{m}[{m}] --> {crate}_{d}[{d}]")
    print("  end\n```")
    c = cycle(edges)
    if c:
        print(f"cycle in {crate}: {' -> '.join(c)}", file=sys.stderr)
        failed = True
sys.exit(1 if failed else 0)
