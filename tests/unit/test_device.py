"""analyses.core.device on the CPU: parsing, refusal messages, idempotence, the float32 mode
(TF32 flags set and restored, reference-counted, never mixing PyTorch's two flag APIs), the
cache key of the TF32 opt-in, and Analysis.run entering the device session.

The CUDA side (first touch from many threads, GPU vs CPU agreement) is in tests/gpu/."""

from __future__ import annotations

import threading

import pytest
import torch

from analyses.core import device as D
from analyses.core.errors import NNVitalsError


@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", "cpu:0", torch.device("cpu"), None])
def test_parse_cpu(spec):
    assert D.parse_device(spec) == torch.device("cpu")


@pytest.mark.parametrize(
    "spec, part",
    [
        ("gpu", "expected 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("cuda:-1", "expected 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("cuda:a", "expected 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("", "expected 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("cpu:1", "the CPU has no index"),
        ("cuda:99999", "expected 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("mps:1", "expected 'mps'"),
        ("x" * 500, "expected 'cpu'"),
        ("cu\nda", "expected 'cpu'"),
    ],
)
def test_parse_refusals_one_line(spec, part):
    with pytest.raises(NNVitalsError) as info:
        D.parse_device(spec)
    msg = str(info.value)
    assert part in msg and "\n" not in msg and len(msg) < 200
    assert msg.startswith("device ")


def test_parse_wrong_type():
    with pytest.raises(NNVitalsError, match="got int; expected 'cpu'"):
        D.parse_device(3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_refused_without_cuda(spec):
    with pytest.raises(NNVitalsError) as info:
        D.prepare_device(spec, where="--device")
    assert str(info.value) == f"--device '{spec}': CUDA is not available on this machine; use 'cpu'"


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="machine has MPS")
def test_mps_refused_without_mps():
    with pytest.raises(NNVitalsError, match="MPS is not available on this machine; use 'cpu'"):
        D.parse_device("mps")


def test_prepare_cpu_idempotent_and_thread_safe():
    out = []
    threads = [threading.Thread(target=lambda: out.append(D.prepare_device("cpu"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [torch.device("cpu")] * 8
    assert D.is_prepared("cpu")


def _flags():
    """The flags through both PyTorch APIs; reading the legacy ones raises if they were mixed."""
    state = D.tf32_state()
    if D._has_new_api():
        state["new"] = (
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.rnn.fp32_precision,
        )
    return state


@pytest.fixture
def user_tf32():
    """A caller who turned TF32 on (as many training scripts do), restored afterwards."""
    before = D._save()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield _flags()
    finally:
        D._restore(before)


def test_float32_mode_exact_then_restored(user_tf32):
    assert user_tf32["matmul_tf32"] and user_tf32["cudnn_tf32"]
    with D.float32_mode(False):
        inside = _flags()  # never a mix of the two APIs (PyTorch >= 2.9 raises at the next matmul)
        assert inside["matmul_tf32"] is False and inside["cudnn_tf32"] is False
        assert inside["matmul_precision"] == "highest"
        if "new" in inside:
            assert inside["new"] == ("ieee", "ieee", "ieee")
    assert _flags() == user_tf32  # the caller's settings are back


def test_float32_mode_default_flags_restored():
    before = _flags()
    with D.float32_mode(False):
        assert _flags()["cudnn_tf32"] is False
    assert _flags() == before


def test_float32_mode_opt_in_and_reference_counting(user_tf32):
    D._restore(
        {
            "precision": "highest",
            "cudnn": False,
            **({"new": ("ieee", "ieee", "ieee")} if D._has_new_api() else {}),
        }
    )
    base = _flags()
    with D.float32_mode(True):
        assert _flags()["matmul_tf32"] and _flags()["cudnn_tf32"]
        assert _flags()["matmul_precision"] == "high"
        with D.float32_mode(False):  # an exact run enters: exactness wins while it runs
            assert not _flags()["matmul_tf32"] and not _flags()["cudnn_tf32"]
        assert _flags()["matmul_tf32"]  # only the TF32 run is left
        assert D.run_active()
    assert not D.run_active()
    assert _flags() == base


def test_float32_mode_concurrent_threads():
    before = _flags()
    barrier = threading.Barrier(6)
    seen = []

    def run(allow):
        with D.float32_mode(allow):
            barrier.wait()
            seen.append(_flags()["matmul_tf32"])
            barrier.wait()

    threads = [threading.Thread(target=run, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [False] * 6  # exact runs were active the whole time
    assert _flags() == before


def test_env_opt_in(monkeypatch):
    monkeypatch.delenv(D.TF32_ENV, raising=False)
    assert D.tf32_allowed(False) is False and D.tf32_allowed(True) is True
    for value in ("1", "true", "YES", "on"):
        monkeypatch.setenv(D.TF32_ENV, value)
        assert D.tf32_allowed(False) is True
    monkeypatch.setenv(D.TF32_ENV, "0")
    assert D.tf32_allowed(False) is False


def test_thread_stream_noop_on_cpu():
    with D.thread_stream("cpu") as s:
        assert s is None
    D.synchronize("cpu")


def test_tf32_in_cache_key_only_when_it_applies(monkeypatch):
    from analyses import SpectralAnalysis

    monkeypatch.delenv(D.TF32_ENV, raising=False)
    a = SpectralAnalysis(model="mlp", cache=False)
    b = SpectralAnalysis(model="mlp", cache=False, allow_tf32=True)
    # on the CPU TF32 changes nothing: same key, and default keys do not carry the parameter
    assert "allow_tf32" not in a.key_params() and a.key_params() == b.key_params()
    assert not b.tf32()
    if torch.cuda.is_available():
        a.device = b.device = "cuda"
        assert b.key_params()["allow_tf32"] is True and "allow_tf32" not in a.key_params()
        monkeypatch.setenv(D.TF32_ENV, "1")
        assert a.key_params()["allow_tf32"] is True


def test_run_enters_device_session(monkeypatch):
    """Analysis.run prepares the device and holds the session while the runner works."""
    from analyses import SpectralAnalysis
    from analyses.core import analysis as A

    calls = []
    real = D.device_session

    def spy(spec, allow):
        calls.append((spec, allow))
        return real(spec, allow)

    monkeypatch.setattr(A.D, "device_session", spy)
    res = SpectralAnalysis(model="mlp", cache=False, show_progress=False).run()
    assert calls == [("cpu", False)]
    assert res.meta["device"] == "cpu"


def test_run_refuses_bad_device_in_one_line():
    from analyses import SpectralAnalysis

    with pytest.raises(NNVitalsError, match=r"^device 'tpu': expected 'cpu', 'cuda', 'cuda:N' or 'mps'$"):
        SpectralAnalysis(model="mlp", cache=False, device="tpu").run()
