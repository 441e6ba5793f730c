#!/usr/bin/env python3
"""Fails when the modules of src/ import each other in a circle (code, not doc comments or unit
tests), and when the AWS edge or the metrics reach above their layer. Run by tests/structure.rs."""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
# what each bottom module may import (besides itself)
ALLOWED = {"limits": set(), "net": set(), "aws": {"limits", "net"}, "metrics": {"aws", "limits"}}

mods = {}
for root, _, files in os.walk(ROOT):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        top = os.path.relpath(path, ROOT)[:-3].split("/")[0]
        if top in ("main", "lib"):
            continue
        src = open(path).read()
        src = re.sub(r"#\[cfg\(test\)\]\s*mod tests.*", "", src, flags=re.S)
        src = "\n".join(l for l in src.split("\n") if not l.strip().startswith("//"))
        deps = set(re.findall(r"crate::([a-z_0-9]+)", src))
        for group in re.findall(r"use crate::\{([^}]*)\}", src):
            deps.update(re.findall(r"(?:^|,)\s*([a-z_0-9]+)", group))
        mods.setdefault(top, set()).update(d for d in deps if d != top)

problems = []
for m, allowed in ALLOWED.items():
    extra = mods.get(m, set()) - allowed
    if extra:
        problems.append(f"src/{m} imports {sorted(extra)}: it may import only {sorted(allowed) or 'nothing of the crate'}")

index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in mods.get(v, ()):
        if w not in mods:
            continue
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v:
                break
        if len(c) > 1:
            cycles.append(sorted(c))
for v in list(mods):
    if v not in index:
        visit(v)
problems += [f"an import circle: {' ↔ '.join(c)}" for c in cycles]
for p in problems:
    print(p, file=sys.stderr)
print(f"{len(mods)} modules, {len(cycles)} import circles")
sys.exit(1 if problems else 0)
