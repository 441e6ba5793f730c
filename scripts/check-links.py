#!/usr/bin/env python3
"""Checks the links of the README and the book (docs/src), and of the built book (target/book).

- Markdown (what GitHub renders): every relative link and image resolves to a file of the
  repository; a `#fragment` names a heading of its target (GitHub's anchors); README.md and every
  chapter are checked, and every chapter is in docs/src/SUMMARY.md.
- HTML (what mdBook built): every relative href/src inside the book resolves to a built file, and
  its fragment to an id there; links that leave the book point into the repository and were
  checked as Markdown.
- Every runbook_url of deploy/prometheus/alerts.yml names a section of docs/src/runbook.md.
External links (http, https, mailto) are not fetched: this machine has no internet.
Exits 1 naming every dead link.
"""
import html.parser
import os
import re
import sys
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOK = os.path.join(ROOT, "target/book")
dead = []

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading):
    """GitHub's (and mdBook's) anchor of a heading."""
    text = re.sub(r"`|\*|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of_markdown(path):
    out, fenced = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def without_code(text):
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def check_markdown(path):
    text = without_code(open(path, encoding="utf-8").read())
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), urllib.parse.unquote(file))) if file else path
        where = os.path.relpath(path, ROOT)
        if not os.path.exists(resolved):
            dead.append(f"{where}: {target}: no such file")
        elif fragment and resolved.endswith(".md") and fragment not in anchors_of_markdown(resolved):
            dead.append(f"{where}: {target}: no heading #{fragment} in {os.path.relpath(resolved, ROOT)}")


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])


def parse_html(path):
    p = Links()
    p.feed(open(path, encoding="utf-8").read())
    return p


def check_book():
    if not os.path.isdir(BOOK):
        dead.append(f"{BOOK} is missing: build the book first (scripts/docs.sh)")
        return
    for chapter in sorted(os.listdir(BOOK)):
        if not chapter.endswith(".html") or chapter in ("print.html", "toc.html", "404.html"):
            continue
        page = os.path.join(BOOK, chapter)
        for target in parse_html(page).links:
            if re.match(r"^[a-z]+:", target) or target.startswith("//"):
                continue
            file, _, fragment = target.partition("#")
            resolved = os.path.normpath(os.path.join(BOOK, urllib.parse.unquote(file))) if file else page
            if not resolved.startswith(BOOK + os.sep):
                continue  # into the repository: checked in the Markdown
            if not os.path.exists(resolved):
                dead.append(f"target/book/{chapter}: {target}: not built")
            elif fragment and resolved.endswith(".html") and fragment not in parse_html(resolved).ids:
                dead.append(f"target/book/{chapter}: {target}: no #{fragment}")


def main():
    src = os.path.join(ROOT, "docs/src")
    chapters = sorted(f for f in os.listdir(src) if f.endswith(".md"))
    summary = open(os.path.join(src, "SUMMARY.md"), encoding="utf-8").read()
    for chapter in chapters:
        if chapter != "SUMMARY.md" and f"({chapter})" not in summary:
            dead.append(f"docs/src/{chapter} is not in SUMMARY.md")
    for path in [os.path.join(ROOT, "README.md")] + [os.path.join(src, c) for c in chapters]:
        check_markdown(path)
    runbook = anchors_of_markdown(os.path.join(src, "runbook.md"))
    for url in re.findall(r"runbook_url: (\S+)", open(os.path.join(ROOT, "deploy/prometheus/alerts.yml")).read()):
        if url.partition("#")[2] not in runbook:
            dead.append(f"deploy/prometheus/alerts.yml: {url}: no such section in docs/src/runbook.md")
    if "--markdown-only" not in sys.argv:
        check_book()
    for d in dead:
        print(f"dead link: {d}", file=sys.stderr)
    print(f"links: {len(dead)} dead (README.md, {len(chapters)} chapters{'' if '--markdown-only' in sys.argv else ', the built book'})")
    return 1 if dead else 0


if __name__ == "__main__":
    sys.exit(main())
