"""Code hashes derived from imports: a workflow rule reruns when code it runs changes.

Snakemake's own code trigger sees a rule's script, not the package it imports. The hash of a
script covers every ``idap`` module in its import closure (computed from the source: top-level
and function-level imports alike, plus each module's parent packages), so editing a module
reruns exactly the rules that import it, and nothing has to be listed by hand. Lines that
only set ``__version__`` are left out: a version bump reruns nothing.
"""

from __future__ import annotations

import ast
import hashlib
import re
from functools import cache
from pathlib import Path

PACKAGE = "idap"
_VERSION_LINE = re.compile(rb"^__version__\s*=.*$", re.M)


def _module_file(root: Path, module: str) -> Path | None:
    """The file of a dotted ``idap`` module under ``root`` (the directory holding idap/)."""
    base = root.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(root: Path, path: Path) -> set[str]:
    """``idap`` modules ``path`` imports anywhere in its body (relative imports resolved);
    parsed once per version of the file (the planner hashes ~20 rules over one package)."""
    st = path.stat()
    return _parsed_imports(root, path, st.st_mtime_ns, st.st_size)


@cache
def _parsed_imports(root: Path, path: Path, _mtime_ns: int, _size: int) -> frozenset[str]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    here = _module_name(root, path) if path.is_relative_to(root) else ""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".") if here else []
                parts = parts if is_pkg else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # a submodule, if it is one
    return frozenset(m for m in found if m == PACKAGE or m.startswith(PACKAGE + "."))


def module_file(module: str, root: str | Path) -> Path:
    """The source file of the ``idap`` module ``module`` under ``root``.

    Raises:
        FileNotFoundError: no such module there.
    """
    found = _module_file(Path(root).resolve(), module)
    if found is None:
        raise FileNotFoundError(f"module {module} not found under {root}")
    return found


def import_closure(
    entry: str | Path, root: str | Path, modules: tuple[str, ...] = ()
) -> list[Path]:
    """Every ``idap`` source file that importing ``entry`` (a script or module file) loads,
    with ``modules`` (dotted names it imports at run time, e.g. a lazily loaded stage) and
    what they import."""
    root, entry = Path(root).resolve(), Path(entry).resolve()
    seen: set[Path] = set()
    todo = [entry, *(module_file(m, root) for m in modules)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(root, path):
            parts = module.split(".")
            for k in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                f = _module_file(root, ".".join(parts[:k]))
                if f is not None and f not in seen:
                    todo.append(f)
    seen.discard(entry)
    return sorted(p for p in seen if p.is_relative_to(root))


@cache
def code_hash(entry: str | Path, root: str | Path, modules: tuple[str, ...] = ()) -> str:
    """sha256 (16 hex digits) of the ``idap`` modules ``entry`` runs (``modules`` included),
    version lines removed."""
    root = Path(root).resolve()
    h = hashlib.sha256()
    for path in import_closure(entry, root, modules):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(_VERSION_LINE.sub(b"", path.read_bytes()) + b"\0")
    return h.hexdigest()[:16]


@cache
def package_digest() -> str:
    """sha256 of every source file of the ``idap`` package this process runs (a cache or
    checkpoint made by other code is not reused)."""
    root = Path(__file__).resolve().parents[1]
    return files_digest((p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*.py")))


def files_digest(named) -> str:
    """sha256 over ``(name, path)`` pairs in the order given: each name and its file's
    bytes (a file renamed or edited changes it)."""
    h = hashlib.sha256()
    for name, path in named:
        h.update(name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()
