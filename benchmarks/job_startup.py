"""What a workflow job pays before its work: importing the modules its script imports.

Every rule runs its script in a fresh interpreter, so on a small model most of a job's time
is start-up (the tests run ~150 jobs). For each script in workflow_scripts/ (the report
script once per report builder), this imports the ``idap`` modules the script imports, in a
fresh process, and prints the median import time, the whole process's wall time as a plain
exit leaves it and with ``gc.freeze()`` before the exit (as ``idap.workflow.job`` does: the
interpreter's final collections over torch's objects are most of the difference), and which
heavy third-party packages came with them. The floors (``import torch``, ``import
torch_pruning``) are printed first.

    .venv/bin/python benchmarks/job_startup.py [--repeat 3]

Asserts nothing; prints figures. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow_scripts"
HEAVY = ("torch", "torch_pruning", "timm", "torchvision", "scipy.stats", "sklearn", "pandas")
HEAVY += ("matplotlib", "onnxruntime")


def script_imports(path: Path) -> list[str]:
    """The ``idap`` modules a workflow script imports (``from idap.stages import x`` names
    the module ``idap.stages.x``), in the order it imports them."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("idap"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file()
                out.append(sub if is_module else node.module)
    return list(dict.fromkeys(out))


def jobs() -> dict[str, list[str]]:
    """Job name -> modules to import, one entry per report for the report script."""
    sys.path.insert(0, str(ROOT))
    from idap.reporting.registry import REPORTS

    out = {}
    for path in sorted(SCRIPTS.glob("*.py")):
        if path.name.startswith("_"):
            continue
        mods = script_imports(path)
        if path.stem == "report":
            for r in REPORTS.values():
                out[f"report:{r.name}"] = [*mods, r.module]
        else:
            out[path.stem] = mods
    return out


PROBE = """
import json, sys, time
t = time.perf_counter()
for m in sys.argv[1:]:
    __import__(m)
wall = time.perf_counter() - t
print(json.dumps({"wall": wall, "heavy": [h for h in %r if h in sys.modules]}))
if %r:
    import gc
    gc.freeze()
"""


def measure(modules: list[str], repeat: int, freeze: bool) -> tuple[float, float, list[str]]:
    """(median in-process import s, median process wall s, heavy packages loaded)."""
    inner, outer, heavy = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", PROBE % (HEAVY, freeze), *modules],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        outer.append(time.perf_counter() - t)
        got = json.loads(res.stdout)
        inner.append(got["wall"])
        heavy = got["heavy"]
    return statistics.median(inner), statistics.median(outer), heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per job")
    args = ap.parse_args()
    rows = [("floor: torch", ["torch"]), ("floor: torch_pruning", ["torch_pruning"])]
    rows += list(jobs().items())
    print(f"{'job':28s} {'import s':>8s} {'process s':>9s} {'frozen s':>8s}  heavy packages")
    for name, modules in rows:
        inner, outer, heavy = measure(modules, args.repeat, freeze=False)
        frozen = measure(modules, args.repeat, freeze=True)[1]
        print(f"{name:28s} {inner:8.2f} {outer:9.2f} {frozen:8.2f}  {', '.join(heavy) or '-'}")


if __name__ == "__main__":
    main()
