"""The result store never serves a wrong result, never loses a finished one, and never hangs.

- Live modules and in-memory exported programs are keyed by their architecture as well as their
  weights: the same weights behind ReLU and LeakyReLU are two models.
- An entry is served only for the key it was written for.
- A write that fails (a directory at the key, a cache directory that is a file) returns the
  result with a warning.
- Reads are bounded: a FIFO, a symlink to ``/dev/zero`` or a huge file at a key are not read.
"""

from __future__ import annotations

import os
import threading
import time
import warnings

import pytest
import torch
from torch import nn

from analyses.bounds import IBPTightness
from analyses.core.result import Result
from analyses.core.store import ResultStore, make_key
from analyses.core.subject import load_subject


def _net(act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), act, nn.Linear(32, 10)).eval()


def _twins() -> tuple[nn.Module, nn.Module]:
    relu, leaky = _net(nn.ReLU()), _net(nn.LeakyReLU(0.3))
    leaky.load_state_dict(relu.state_dict())
    return relu, leaky


def _ibp(model, cache_dir) -> float:
    res = IBPTightness(
        model=model, data="digits", max_samples=64, cache_dir=str(cache_dir), show_progress=False
    ).run()
    return float(res.summary["tightness"])


def test_same_weights_other_activation_is_another_model(tmp_path):
    relu, leaky = _twins()
    assert load_subject(relu).fingerprint != load_subject(leaky).fingerprint
    first = _ibp(relu, tmp_path)
    second = _ibp(leaky, tmp_path)  # same cache: must not be served the ReLU result
    fresh = _ibp(leaky, tmp_path / "fresh")
    assert second == pytest.approx(fresh)
    assert abs(first - second) > 1e-3


def test_in_memory_exports_are_keyed_by_their_graph():
    relu, leaky = _twins()
    x = (torch.randn(2, 64),)
    a = load_subject(torch.export.export(relu, x))
    b = load_subject(torch.export.export(leaky, x))
    assert a.fingerprint != b.fingerprint


def test_custom_forward_code_and_hooks_change_the_fingerprint():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    class Doubled(Plain):
        def forward(self, x):
            return 2 * self.fc(x)

    a, b = Plain(), Doubled()
    b.load_state_dict(a.state_dict())
    fa, fb = load_subject(a).fingerprint, load_subject(b).fingerprint
    assert fa != fb
    handle = a.fc.register_forward_hook(lambda m, i, o: o * 3)
    try:
        assert load_subject(a).fingerprint != fa
    finally:
        handle.remove()
    assert load_subject(a).fingerprint == fa


def _result(n: int = 3) -> Result:
    import pandas as pd

    return Result(table=pd.DataFrame({"x": range(n)}), summary={"n": n}, meta={"analysis": "t"})


def test_an_entry_is_served_only_for_its_own_key(tmp_path):
    store = ResultStore(tmp_path)
    k1, k2 = make_key(a=1), make_key(a=2)
    p1 = store.put(k1, _result(3))
    p2 = store.path(k2)
    p2.parent.mkdir(parents=True, exist_ok=True)
    p2.write_bytes(p1.read_bytes())  # an entry moved or copied to another key
    assert store.get(k1).summary["n"] == 3
    assert store.get(k2) is None
    assert not p2.exists()


def test_a_failed_write_returns_the_result_with_a_warning(tmp_path):
    relu, _ = _twins()
    analysis = IBPTightness(
        model=relu, data="digits", max_samples=32, cache_dir=str(tmp_path), show_progress=False
    )
    key = analysis.cache_key()
    ResultStore(tmp_path).path(key).mkdir(parents=True)  # a directory where the entry goes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = analysis.run()
    assert res.summary["tightness"] > 0
    assert any("cannot write" in str(w.message) for w in caught)
    assert "cannot write" in res.meta["store_error"]

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = IBPTightness(
            model=relu, data="digits", max_samples=32, cache_dir=str(blocker / "cache"), show_progress=False
        ).run()
    assert res.summary["tightness"] > 0
    assert any(str(blocker) in str(w.message) for w in caught)


def _get_within(store: ResultStore, key: str, seconds: float = 5.0):
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", store.get(key)), daemon=True)
    t0 = time.perf_counter()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the store hung reading the entry"
    return out.get("r"), time.perf_counter() - t0


def test_reads_are_bounded(tmp_path):
    store = ResultStore(tmp_path)
    fifo, zero, huge = make_key(k="fifo"), make_key(k="zero"), make_key(k="huge")
    for k in (fifo, zero, huge):
        store.path(k).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(store.path(fifo))
    os.symlink("/dev/zero", store.path(zero))
    with open(store.path(huge), "wb") as f:  # 6 GiB, sparse: costs no disk
        f.truncate(6 * 2**30)
    for k in (fifo, zero, huge):
        result, seconds = _get_within(store, k)
        assert result is None and seconds < 2, (k, seconds)
    assert store.path(fifo).exists()  # not ours to delete: left alone, never read
