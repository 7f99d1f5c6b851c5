import pytest
import torch

import interp_ext

HAS_CUDA = torch.cuda.is_available() and interp_ext.build_info()["cuda_compiled"]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and a CUDA build of interp_ext")
    for item in items:
        if "needs_cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _tuning_cache(tmp_path_factory, monkeypatch):
    # each test (and the processes it starts) measures afresh, never in the user's cache
    monkeypatch.setenv("INTERP_EXT_CACHE", str(tmp_path_factory.mktemp("tuning_cache")))
