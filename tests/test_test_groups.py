"""make test's scheduling: tests that share a module fixture run on one xdist worker."""

import re
import shutil
from pathlib import Path

pytest_plugins = ["pytester"]

SUITE = """
import pytest

@pytest.fixture(scope="module")
def trained():
    return object()

@pytest.fixture
def through(trained):  # a function fixture over the shared one
    return trained

def test_a(trained): pass
def test_d(): pass
def test_b(through): pass
def test_e(): pass
def test_c(trained): pass
def test_f(): pass
"""


def test_tests_sharing_a_module_fixture_run_on_one_worker(pytester):
    shutil.copy(Path(__file__).with_name("conftest.py"), pytester.path / "conftest.py")
    pytester.makepyfile(test_suite=SUITE)
    res = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider"
    )
    res.assert_outcomes(passed=6)
    ran = {}
    for line in res.stdout.lines:
        m = re.search(r"\[(gw\d)\] .*PASSED test_suite\.py::(test_\w+)", line)
        if m:
            ran[m.group(2)] = m.group(1)
    assert len(ran) == 6, res.stdout.str()
    assert ran["test_a"] == ran["test_b"] == ran["test_c"]
