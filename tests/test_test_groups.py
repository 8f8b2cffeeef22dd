"""make test's scheduling: tests that share a module fixture run on one xdist worker."""
# a group's name is derived on each worker: xdist refuses the run if they differ

import re
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SUITE = """
import pytest

@pytest.fixture(scope="module")
def trained():
    return object()

@pytest.fixture(scope="module")
def data():
    return object()

@pytest.fixture
def through(trained):  # a function fixture over the shared one
    return trained

def test_a(trained): pass
def test_d(): pass
def test_b(through): pass
def test_e(): pass
def test_c(trained, data): pass
def test_f(): pass
def test_g(data): pass
"""


def test_tests_sharing_a_module_fixture_run_on_one_worker(pytester):
    shutil.copy(Path(__file__).with_name("conftest.py"), pytester.path / "conftest.py")
    pytester.makepyfile(test_suite=SUITE)
    res = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider"
    )
    res.assert_outcomes(passed=7)
    ran = {}
    for line in res.stdout.lines:
        m = re.search(r"\[(gw\d)\] .*PASSED test_suite\.py::(test_\w+)", line)
        if m:
            ran[m.group(2)] = m.group(1)
    assert len(ran) == 7, res.stdout.str()
    # test_c joins the two fixtures' groups into one, named alike on every worker (whose
    # hash seeds differ: a name that followed set order made xdist refuse the run)
    assert ran["test_a"] == ran["test_b"] == ran["test_c"] == ran["test_g"]


class _Item:
    def __init__(self, nodeid):
        self.nodeid, self.marks = nodeid, []

    def add_marker(self, mark):
        self.marks.append(mark)


def test_a_groups_name_does_not_depend_on_the_order_fixtures_come_in(monkeypatch):
    """Workers list an item's fixtures in their own hash order; each must name the group
    the same, or xdist refuses the run (different collections)."""
    import conftest

    one, two = ("module", "t.py", "one"), ("module", "t.py", "two")
    names = set()
    for order in ([one, two], [two, one]):
        requested = {"a": [one], "b": [two], "c": order, "d": []}
        monkeypatch.setattr(conftest, "shared_fixtures", lambda item, r=requested: r[item.nodeid])
        items = [_Item(n) for n in "abcd"]
        conftest.group_by_shared_fixtures(items)
        assert not items[3].marks  # no shared fixture: dealt out alone
        group = {i.marks[0].kwargs["name"] for i in items[:3]}
        assert len(group) == 1  # a and b are joined through c
        names |= group
    assert names == {"module:t.py:one"}


class _Marked:
    def __init__(self, name, group=None, slow=False):
        self.nodeid, self.marks = name, {}
        if group:
            self.marks["xdist_group"] = pytest.mark.xdist_group(name=group).mark
        if slow:
            self.marks["slow"] = pytest.mark.slow.mark

    def get_closest_marker(self, name):
        return self.marks.get(name)


def test_groups_with_a_slow_test_are_handed_out_first():
    import conftest

    items = [
        _Marked("quick"),
        _Marked("shared_quick", group="g1"),
        _Marked("slow_alone", slow=True),
        _Marked("shared_a", group="g2"),
        _Marked("quick_2"),
        _Marked("shared_b", group="g2", slow=True),
    ]
    conftest.slow_groups_first(items)
    names = [i.nodeid for i in items]
    assert names == ["slow_alone", "shared_a", "shared_b", "quick", "shared_quick", "quick_2"]
