import inspect
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs a worker per core: each worker's torch and its Snakemake runs keep to
    # one thread and one core, or the workers oversubscribe the machine (many times slower)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("IDAP_TEST_CORES", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config, items):
    # an xdist worker sees --dist loadgroup as option.loadgroup
    if (
        getattr(config.option, "loadgroup", False)
        or getattr(config.option, "dist", "") == "loadgroup"
    ):
        group_by_shared_fixtures(items)
        slow_groups_first(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TESTS = Path(__file__).resolve().parent


def shared_fixtures(item) -> set[tuple[str, ...]]:
    """The module- and session-scoped fixtures of this suite that ``item`` requests,
    directly or through other fixtures (autouse ones only where requested: here they only
    set a thread count)."""
    defs = item._fixtureinfo.name2fixturedefs
    out, todo, seen = set(), list(item._fixtureinfo.argnames), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        fd = defs[name][-1]
        try:
            source = Path(inspect.getsourcefile(fd.func)).resolve()
        except TypeError:  # defined in C
            continue
        if TESTS not in source.parents:
            continue  # pytest's own (tmp_path_factory, ...): not a shared result
        if fd.scope in ("module", "package", "class"):
            out.add((fd.scope, source.name, name))
        elif fd.scope == "session":
            out.add((fd.scope, name))
        todo.extend(fd.argnames)
    return out


def group_by_shared_fixtures(items) -> None:
    """Under ``--dist loadgroup`` (make test): tests that share a module- or session-scoped
    fixture (a trained model, a finished workflow run, a SLURM cluster) go to one worker,
    which builds it once; every other test is dealt out on its own, so no long test file
    holds up the run. Derived from what the tests request, not kept as a list."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keys = {}
    for item in items:
        keys[item.nodeid] = sorted(shared_fixtures(item))
        for key in keys[item.nodeid]:
            parent[find(item.nodeid)] = find(key)
    # a group's name must not depend on set order (hash seeds differ between workers, and
    # xdist refuses workers whose collections differ): the smallest fixture key of the group
    names: dict = {}
    for key in (k for ks in keys.values() for k in ks):
        root = find(key)
        names[root] = min(names.get(root, key), key)
    for item in items:
        if keys[item.nodeid]:
            name = ":".join(names[find(item.nodeid)])
            item.add_marker(pytest.mark.xdist_group(name=name))


def slow_groups_first(items) -> None:
    """Under ``--dist loadgroup``: the groups holding a test marked slow (a real workflow
    run, minutes each) go first in the collection, the rest keep their order. xdist hands
    groups out in collection order after a stable sort by their number of tests, so of
    groups of one size the slow ones start first: a long one started last would leave one
    worker running alone at the end."""

    def group(item):
        mark = item.get_closest_marker("xdist_group")
        return mark.kwargs["name"] if mark else item.nodeid

    slow = {group(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: group(item) not in slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _methods():
    """Variants a test registers (config ``variants``) stay in that test."""
    from idap.engine.methods import register_variants

    yield
    register_variants({})
