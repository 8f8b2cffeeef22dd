"""The repository documents itself: its markdown links resolve inside it, and nothing points
at files a reader of the repository does not have (the method description lives in
docs/method.md). Pure file reading, no torch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# Inline links and images: [text](target) or [text](target "title"), target maybe in <...>.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
# Reference definitions: [label]: target
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")

# a relative path that climbs out of its folder: it must still land inside the repository
UPWARD_PATH = re.compile(r"(?<![\w./])((?:\.\./)+[\w.-][\w./-]*)")
SCANNED_DIRS = ("docs", "config", "report", "idap", "rules", "tests", "workflow_scripts")
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".so", ".png", ".jpg", ".jpeg", ".pdf", ".safetensors"}


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (their brackets are code)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(CODE_SPAN.sub("", line))
    return "\n".join(out)


def link_targets(text: str) -> list[str]:
    body = prose(text)
    return INLINE_LINK.findall(body) + REFERENCE_DEF.findall(body)


def broken_links(md: Path, root: Path = ROOT) -> list[str]:
    """Relative link targets of ``md`` that resolve to nothing inside ``root``."""
    bad = []
    for target in link_targets(md.read_text(encoding="utf-8")):
        if not target or target.startswith("#") or target.lower().startswith(EXTERNAL):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (md.parent / path).resolve()
        inside = resolved == root.resolve() or root.resolve() in resolved.parents
        if not inside or not resolved.exists():
            bad.append(target)
    return bad


def scanned_files() -> list[Path]:
    """README.md and every text file under SCANNED_DIRS, each real file once."""
    files = [ROOT / "README.md"]
    for d in SCANNED_DIRS:
        if (ROOT / d).is_dir():
            files += sorted(p for p in (ROOT / d).rglob("*") if p.is_file())
    seen, out = set(), []
    for p in files:
        if SKIPPED_PARTS & set(p.relative_to(ROOT).parts) or p.suffix in SKIPPED_SUFFIXES:
            continue
        real = p.resolve()
        if real == THIS or real in seen:
            continue
        seen.add(real)
        out.append(p)
    return out


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    assert md.is_file(), f"{md.relative_to(ROOT)} is missing"
    bad = broken_links(md)
    assert not bad, f"{md.relative_to(ROOT)} links to missing paths: {', '.join(bad)}"


def test_method_description_is_in_the_repository():
    method = ROOT / "docs" / "method.md"
    assert method.is_file()
    headings = re.findall(r"^## (\d+)\. ", method.read_text(encoding="utf-8"), re.MULTILINE)
    assert [int(h) for h in headings] == list(range(9)), "docs/method.md keeps §0-§8"
    assert "docs/method.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def paths_outside(p: Path, root: Path = ROOT) -> list[str]:
    """``../``-relative paths written in ``p`` that resolve outside ``root``."""
    text = p.read_text(encoding="utf-8", errors="ignore")
    out = []
    for path in UPWARD_PATH.findall(text):
        resolved = (p.parent / path).resolve()
        if resolved != root.resolve() and root.resolve() not in resolved.parents:
            out.append(path)
    return out


def test_no_references_outside_the_repository():
    offenders = []
    for p in scanned_files():
        if hits := paths_outside(p):
            offenders.append(f"{p.relative_to(ROOT)} ({', '.join(hits)})")
    assert not offenders, "files referring to what the repository lacks: " + "; ".join(offenders)


def test_outside_path_check_sees_a_path_out_of_the_repository(tmp_path):
    (tmp_path / "rules").mkdir()
    f = tmp_path / "rules" / "x.smk"
    f.write_text('conda: "../envs/idap.yaml"\nsee ../../planning/notes.txt\n')
    assert paths_outside(f, tmp_path) == ["../../planning/notes.txt"]


def test_link_checker_sees_a_broken_link(tmp_path):
    """The checker itself: a missing target is reported, code and external links are not."""
    md = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    md.write_text(
        "[ok](there.md) [ok](there.md#part) [web](https://example.org/x) [anchor](#a)\n"
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n[bad](missing.md#part)\n"
        '![img](also-missing.png "title")\n[ref]: ./gone.md\n'
    )
    assert broken_links(md, tmp_path) == ["missing.md#part", "also-missing.png", "./gone.md"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up.md").write_text("[out](../../outside.md) [in](../there.md)")
    assert broken_links(tmp_path / "sub" / "up.md", tmp_path) == ["../../outside.md"]
