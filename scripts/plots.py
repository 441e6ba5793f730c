#!/usr/bin/env python3
"""The book's plots, drawn as SVG from the measured figures (standard library only):

- docs/src/plots/cpu-per-message.svg: CPU per message against the peers, by body size
  (bench/results.json, written by `scripts/bench.sh`);
- docs/src/plots/adaptive-concurrency.svg: static against adaptive concurrency as the worker's
  capacity drops and comes back (bench/RESULTS.md's table, written by benches/protect.rs);
- docs/src/plots/fleet.svg: the demo's fleet growing on a burst and coming back to min
  (bench/demo-fleet.csv, written by `DEMO_CSV=bench/demo-fleet.csv scripts/demo.sh`).

`scripts/plots.py` writes them; `scripts/plots.py --check` (run by scripts/docs.sh) fails when a
committed plot differs from what its data draws.
"""
import csv
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs/src/plots")
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
FONT = 'font-family="sans-serif" font-size="12"'


def svg(width, height, body, title):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{title}">\n'
            f'<rect width="{width}" height="{height}" fill="white"/>\n'
            f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" {FONT} font-weight="bold">{title}</text>\n'
            + "".join(body) + "</svg>\n")


def text(x, y, s, anchor="start", extra=""):
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT} {extra}>{s}</text>\n'


def cpu_per_message():
    results = json.load(open(os.path.join(ROOT, "bench/results.json")))
    sizes = results["sizes"]
    names = list(sizes[0]["contenders"].keys())
    labels = {n: sizes[0]["contenders"][n]["label"] for n in names}
    width, row, left, right = 800, 18, 300, 90
    height = 60 + len(sizes) * (len(names) * row + 30) + 20
    body, y = [], 45
    for size in sizes:
        kib = size["body_bytes"] // 1024
        body.append(text(10, y + 12, f"{kib} KiB bodies", extra='font-weight="bold"'))
        y += 18
        values = {n: size["contenders"][n]["median_range"]["cpu_us_per_msg"]["median"] for n in names}
        top = max(values.values())
        for i, n in enumerate(names):
            w = (width - left - right) * values[n] / top
            body.append(text(left - 8, y + 13, labels[n], "end"))
            body.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" fill="{COLORS[i % 5]}"/>\n')
            body.append(text(left + w + 6, y + 13, f"{values[n]:.1f} µs"))
            y += row
        y += 12
    body.append(text(10, height - 8, f"CPU per message, median of the runs (lower is better); "
                     f"{results['date']}, commit {results['commit']}, {results['machine']['cores']} cores",
                     extra='fill="#555"'))
    return svg(width, height, body, "CPU per message: sqs-poller against the peers")


def concurrency_rows():
    text_md = open(os.path.join(ROOT, "bench/RESULTS.md"), encoding="utf-8").read()
    block = text_md.split("<!-- concurrency: begin")[1].split("<!-- concurrency: end")[0]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in ("static", "adaptive"):
            p99 = int(re.search(r"/ (\d+) ms", cells[3]).group(1))
            rows.append({"contender": cells[0], "capacity": int(cells[1]), "rate": int(cells[2]), "p99": p99,
                         "throttles": int(cells[4]), "at_worker": float(cells[5])})
    return rows


def adaptive_concurrency():
    rows = concurrency_rows()
    phases = [r["capacity"] for r in rows if r["contender"] == "static"]
    width, height, left, bottom, top = 760, 345, 60, 285, 60
    scale = (bottom - top) / 70
    phase_w = (width - left - 30) / len(phases)
    body = [f'<line x1="{left}" y1="{bottom}" x2="{width - 30}" y2="{bottom}" stroke="#333"/>\n',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>\n']
    for v in range(0, 71, 10):
        body.append(text(left - 6, bottom - v * scale + 4, str(v), "end"))
    for i, capacity in enumerate(phases):
        x0 = left + i * phase_w
        y = bottom - capacity * scale
        body.append(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x0 + phase_w:.1f}" y2="{y:.1f}" stroke="#000" '
                    f'stroke-dasharray="6 4"/>\n')
        body.append(text(x0 + phase_w / 2, bottom + 16, f"capacity {capacity} (20 s)", "middle"))
        for j, contender in enumerate(["static", "adaptive"]):
            r = [r for r in rows if r["contender"] == contender][i]
            bx = x0 + phase_w * (0.2 + 0.32 * j)
            h = r["at_worker"] * scale
            body.append(f'<rect x="{bx:.1f}" y="{bottom - h:.1f}" width="{phase_w * 0.28:.1f}" height="{h:.1f}" '
                        f'fill="{COLORS[j * 2]}"/>\n')
            body.append(text(bx + phase_w * 0.14, bottom - h - 18, f"p99 {r['p99']} ms", "middle"))
            body.append(text(bx + phase_w * 0.14, bottom - h - 5, f"{r['throttles']} × 503", "middle"))
    body.append(text(left, bottom + 36, "■ static (max_concurrency 64)", extra=f'fill="{COLORS[0]}"'))
    body.append(text(left + 220, bottom + 36, "■ adaptive", extra=f'fill="{COLORS[2]}"'))
    body.append(text(left + 330, bottom + 36, "- - the worker's capacity (batches at once)"))
    body.append(text(left + 4, top - 6, "batches at the worker (mean)", extra='fill="#555"'))
    return svg(width, height, body, "Adaptive concurrency follows the worker's capacity")


def fleet():
    samples = list(csv.DictReader(open(os.path.join(ROOT, "bench/demo-fleet.csv"))))
    t = [float(s["seconds"]) for s in samples]
    pollers = [int(s["pollers"]) for s in samples]
    deleted = [int(s["deleted"]) for s in samples]
    width, height, left, right, top, bottom = 760, 320, 60, 70, 45, 265
    t_max, p_max, d_max = max(t), max(pollers), max(deleted)
    x = lambda v: left + (width - left - right) * v / t_max
    yp = lambda v: bottom - (bottom - top) * v / (p_max * 1.1)
    yd = lambda v: bottom - (bottom - top) * v / (d_max * 1.1)
    step = " ".join(f"{x(t[i]):.1f},{yp(pollers[i - 1] if i else pollers[0]):.1f} {x(t[i]):.1f},{yp(pollers[i]):.1f}"
                    for i in range(len(t)))
    done = " ".join(f"{x(a):.1f},{yd(b):.1f}" for a, b in zip(t, deleted))
    body = [f'<line x1="{left}" y1="{bottom}" x2="{width - right}" y2="{bottom}" stroke="#333"/>\n',
            f'<polyline points="{done}" fill="none" stroke="{COLORS[1]}" stroke-width="2"/>\n',
            f'<polyline points="{step}" fill="none" stroke="{COLORS[0]}" stroke-width="2"/>\n']
    for v in range(0, p_max + 1, 4):
        body.append(text(left - 6, yp(v) + 4, str(v), "end", f'fill="{COLORS[0]}"'))
    for v in range(0, d_max + 1, 1000):
        body.append(text(width - right + 6, yd(v) + 4, f"{v:,}", extra=f'fill="{COLORS[1]}"'))
    for v in range(0, int(t_max) + 1, 10):
        body.append(text(x(v), bottom + 16, f"{v} s", "middle"))
    body.append(text(left, bottom + 40, "— pollers", extra=f'fill="{COLORS[0]}"'))
    body.append(text(left + 90, bottom + 40, "— messages deleted", extra=f'fill="{COLORS[1]}"'))
    body.append(text(left + 250, bottom + 40, "the demo: 5,000 messages, 25 ms per SQS call, min 1, max 16",
                     extra='fill="#555"'))
    return svg(width, height, body, "A burst: the fleet grows within a second, drains, and comes back to min")


PLOTS = {"cpu-per-message.svg": cpu_per_message, "adaptive-concurrency.svg": adaptive_concurrency, "fleet.svg": fleet}


def main():
    check = "--check" in sys.argv
    stale = []
    os.makedirs(OUT, exist_ok=True)
    for name, draw in PLOTS.items():
        path = os.path.join(OUT, name)
        drawn = draw()
        if check:
            if not os.path.exists(path) or open(path, encoding="utf-8").read() != drawn:
                stale.append(name)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(drawn)
    if stale:
        print(f"plots: {', '.join(stale)} differ from their data: run scripts/plots.py and commit", file=sys.stderr)
        return 1
    print(f"plots: {len(PLOTS)} {'match their data' if check else 'written to docs/src/plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
