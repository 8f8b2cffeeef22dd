"""The planner's index of registry names: built once per version of the code and plugins,
shared by every working directory, read without importing torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

from idap.core.name_cache import _key, default_cache_dir
from idap.core.names import KEEP, name_index

READ = """
import json, sys
from idap.core.names import name_index
index = name_index((), sys.argv[1])
print(json.dumps({"torch": "torch" in sys.modules, "index": index}))
"""


def _python_json(code: str, *args: str, **kwargs) -> dict:
    """What ``code``, run in a fresh interpreter with ``args``, prints as JSON (a fresh
    process shows what a job imports)."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, **kwargs
    )
    return json.loads(out.stdout)


def test_a_built_index_is_read_from_another_directory_without_torch(tmp_path):
    cache = tmp_path / "cache"
    built = name_index((), cache)  # this process has torch already: the slow path is cheap
    assert "resnet_micro" in built["model"] and "idap" in built["method"]
    (entry,) = cache.iterdir()
    os.utime(entry, (1000, 1000))
    elsewhere = tmp_path / "another_run"
    elsewhere.mkdir()
    got = _python_json(READ, str(cache), cwd=elsewhere)
    assert got["torch"] is False, "a current index was rebuilt (torch imported)"
    assert got["index"] == json.loads(json.dumps(built))  # as the cache file holds it
    assert not list(elsewhere.iterdir())  # nothing written into the run directory
    assert entry.stat().st_mtime > 1000  # marked as used: the last to be evicted


def test_editing_a_plugin_changes_the_key(tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text("X = 1\n")
    before = _key([str(plugin)])
    assert _key([str(plugin)]) == before != _key([])
    plugin.write_text("X = 2\n")
    assert _key([str(plugin)]) != before


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("IDAP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg/idap/names"
    monkeypatch.setenv("IDAP_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine/names"
    monkeypatch.delenv("IDAP_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home/.cache/idap/names"

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert default_cache_dir() == Path(".snakemake/idap-names")  # the run directory's


def test_an_unwritable_cache_still_gives_the_index(tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # the cache directory cannot be made below a file
    index = name_index((), blocked / "names")
    assert "idap" in index["method"]
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_a_new_entry_evicts_all_but_the_last_used(tmp_path):
    cache = tmp_path / "names"
    cache.mkdir()
    stale = []
    for i in range(KEEP + 5):  # entries of older code, the first one used most recently
        p = cache / f"old{i:02d}.json"
        p.write_text("{}")
        os.utime(p, (1000 - i, 1000 - i))
        stale.append(p)
    name_index((), cache)
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == KEEP and f"{_key(())}.json" in left
    assert [p.name for p in stale[: KEEP - 1]] == [n for n in left if n.startswith("old")]
    assert not list(cache.glob("*.tmp"))


PLUGIN = """
from pathlib import Path
from idap.engine.methods import Method, register_method
Path(__file__).with_suffix(".imported").touch()
register_method(Method("index_only", "l1", "Known from the index"))
"""
REPORT_JOB = """
import json, sys
from types import SimpleNamespace
from idap.engine.methods import get_method
from idap.workflow import job
variants = {"index_only_v": {"method": "index_only", "prune": {"steps": 3}}}
sm = SimpleNamespace(config={"plugins": [sys.argv[1]], "variants": variants}, log=[])
with job(sm, "tables", import_plugins=False):
    pass
print(json.dumps({"torch": "torch" in sys.modules, "label": get_method("index_only").label,
                  "variant_of": get_method("index_only_v").variant_of}))
"""


def test_a_report_job_takes_a_plugins_methods_from_the_index(tmp_path):
    """A report reads only the methods' declarations: with the index current it neither
    imports the plugin nor torch, yet knows the plugin's method and a variant of it; with
    none cached, it imports the plugin."""
    plugin = tmp_path / "mine.py"
    plugin.write_text(PLUGIN)
    env = dict(os.environ, IDAP_CACHE_DIR=str(tmp_path / "cache"))
    build = "import sys; from idap.core.names import name_index; name_index([sys.argv[1]])"
    subprocess.run([sys.executable, "-c", build, str(plugin)], env=env, check=True)
    marker = plugin.with_suffix(".imported")
    assert marker.exists()  # building the index imported it
    marker.unlink()
    got = _python_json(REPORT_JOB, str(plugin), env=env)
    assert got == {"torch": False, "label": "Known from the index", "variant_of": "index_only"}
    assert not marker.exists(), "the report job imported the plugin"
    # with no index where the job looks, it imports the plugin: same methods
    env["IDAP_CACHE_DIR"] = str(tmp_path / "empty")
    assert _python_json(REPORT_JOB, str(plugin), env=env) == got and marker.exists()
