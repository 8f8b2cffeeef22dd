import os

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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _methods():
    """Variants a test registers (config ``variants``) stay in that test."""
    from idap.engine.methods import register_variants

    yield
    register_variants({})
