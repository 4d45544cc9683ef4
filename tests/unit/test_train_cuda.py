"""The train step fails with CUDA_UNAVAILABLE when its pod asked for GPUs and CUDA is not usable,
instead of training with gloo on CPU while holding the GPUs (issue 14)."""

import pytest
import torch

from components._shared.errors import CtpError
from components.train import core


def test_gpus_requested_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(core.GPUS_REQUESTED_ENV, "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(CtpError) as err:
        core.setup_distributed()
    assert err.value.code == "CUDA_UNAVAILABLE"
    assert "CUDA 12.8" in err.value.hint and "NVIDIA driver" in err.value.hint


def test_a_cpu_only_torch_says_so(monkeypatch):
    monkeypatch.setenv(core.GPUS_REQUESTED_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(CtpError, match="requested") as err:
        core.require_cuda_if_requested()
    assert err.value.code == "CUDA_UNAVAILABLE" and "CPU-only" in err.value.hint


@pytest.mark.parametrize("value", [None, "", "0"])
def test_no_gpus_requested_trains_on_cpu(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(core.GPUS_REQUESTED_ENV, raising=False)
    else:
        monkeypatch.setenv(core.GPUS_REQUESTED_ENV, value)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert core.setup_distributed().backend == "none"


def test_gpus_requested_with_cuda_passes(monkeypatch):
    monkeypatch.setenv(core.GPUS_REQUESTED_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    core.require_cuda_if_requested()
