"""Shared pytest configuration: hypothesis profile, GPU and simulator markers, and a fake CUDA
device for compiling to PTX without a GPU."""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "parscan",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("PARSCAN_HYPOTHESIS_PROFILE", "parscan"))

CUDASIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def _real_gpu_present() -> bool:
    if CUDASIM:
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    gpu = _real_gpu_present()
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU present")
    skip_sim = pytest.mark.skip(reason="simulator tests run only with NUMBA_ENABLE_CUDASIM=1")
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)
        if "cudasim" in item.keywords and not CUDASIM:
            item.add_marker(skip_sim)


class _FakeDevice:
    compute_capability = (9, 0)


@pytest.fixture
def no_device_context(monkeypatch):
    """compile_ptx of a kernel calling device functions asks for the current device; answer
    with a compute-capability 9.0 one (numba is imported here, after the simulator switch)."""
    import numba.cuda

    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device", lambda: _FakeDevice())
