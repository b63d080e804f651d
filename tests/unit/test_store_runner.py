"""Result persistence (no pickle), the content-addressed store, and the task runner."""

import threading
import time

import numpy as np
import pandas as pd
import pytest

from analyses.core.errors import Cancelled, NNVitalsError
from analyses.core.result import Result
from analyses.core.runner import CancelToken, Runner, Task, parse_spec
from analyses.core.store import ResultStore, make_key


def sample_result() -> Result:
    table = pd.DataFrame(
        {"name": ["a", "b", None], "alpha": [2.5, np.nan, 3.25], "n": [1, 2, 3], "ok": [True, False, True]}
    )
    return Result(
        table=table,
        summary={"alpha": np.float64(2.875), "layers": 3, "none": None},
        arrays={"esd/a": np.arange(5.0), "esd/b": np.array([], dtype=float)},
        meta={"analysis": "demo", "params": {"x": (1, 2)}},
    )


def test_result_round_trip_without_pickle(tmp_path):
    r = sample_result()
    r2 = Result.load(r.save(tmp_path / "r.nnv"))
    assert r2.table["alpha"].iloc[0] == 2.5 and np.isnan(r2.table["alpha"].iloc[1])
    assert list(r2.table["name"]) == ["a", "b", ""]
    assert r2.table["n"].dtype.kind == "i" and r2.table["ok"].dtype == bool
    assert r2.summary == {"alpha": 2.875, "layers": 3, "none": None}
    np.testing.assert_array_equal(r2.arrays["esd/a"], np.arange(5.0))
    assert r2.meta["params"] == {"x": [1, 2]}


def test_result_load_errors(tmp_path):
    with pytest.raises(NNVitalsError, match="no such result file"):
        Result.load(tmp_path / "missing.nnv")
    (tmp_path / "junk.nnv").write_text("junk")
    with pytest.raises(NNVitalsError, match="junk.nnv: not a readable nnvitals result"):
        Result.load(tmp_path / "junk.nnv")


def test_store_hit_miss_and_damage_detection(tmp_path):
    store = ResultStore(tmp_path)
    key = make_key(analysis="demo", params={"a": 1}, model="m", data=None, version="1")
    assert key == make_key(version="1", data=None, model="m", params={"a": 1}, analysis="demo")
    assert key != make_key(analysis="demo", params={"a": 2}, model="m", data=None, version="1")
    assert store.get(key) is None
    path = store.put(key, sample_result())
    assert store.get(key).summary["layers"] == 3
    assert not list(path.parent.glob(".tmp-*"))  # atomic write left no temporary file
    blob = bytearray(path.read_bytes())
    blob[-20] ^= 0xFF  # flip one byte inside the payload
    path.write_bytes(bytes(blob))
    assert store.get(key) is None  # damaged: reported as a miss ...
    assert not path.exists()  # ... and removed so it is recomputed
    store.put(key, sample_result())
    path.write_bytes(path.read_bytes()[:50])  # truncated
    assert store.get(key) is None


def square(x):
    time.sleep(0.01)
    return x * x


def test_thread_runner_order_progress_and_errors():
    seen = []
    out = Runner("threads", num_workers=3).map(
        [Task(square, (i,), label=str(i)) for i in range(10)], progress=lambda d, t, lab: seen.append((d, t))
    )
    assert out == [i * i for i in range(10)]
    assert seen[-1] == (10, 10) and len(seen) == 10

    def boom():
        raise NNVitalsError("bad layer")

    with pytest.raises(NNVitalsError, match="bad layer"):
        Runner("threads", num_workers=2).map([Task(square, (1,)), Task(boom)])


@pytest.mark.parametrize("workers", [1, 2])
def test_cancellation_between_tasks(workers):
    token = CancelToken()
    started = []

    def slow(i):
        started.append(i)
        if i == 1:
            token.cancel()
        time.sleep(0.05)
        return i

    with pytest.raises(Cancelled):
        Runner("threads", num_workers=workers).map([Task(slow, (i,)) for i in range(40)], cancel=token)
    assert len(started) < 40


def test_runner_spec_validation():
    assert parse_spec(None) == "threads"
    assert parse_spec("127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    with pytest.raises(NNVitalsError, match="expected 'threads', 'local'"):
        parse_spec("gpu-farm")


def test_cancel_token_is_thread_safe():
    token = CancelToken()
    t = threading.Thread(target=token.cancel)
    t.start()
    t.join()
    with pytest.raises(Cancelled):
        token.check()
