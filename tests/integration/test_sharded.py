"""Spectra at scale on the CPU: sharded Hugging Face checkpoints (index.json), the prefetching
reader, batched eigensolves of same-shaped matrices and device-batched FARMS windows, each
checked against the per-matrix computation; Dask workers streaming from the shared path."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from analyses import NNVitalsError, SpectralAnalysis, load_subject
from analyses.spectra import analysis as SA
from analyses.spectra import farms as FA
from analyses.spectra import kernels as K
from analyses.spectra.stream import Prefetcher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
from llama_checkpoint import make_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama") / "tiny-llama"
    info = make_checkpoint(d, blocks=2, hidden=128, shards=3, seed=1)
    return d, info


def run(model, **kw):
    kw.setdefault("cache", False)
    kw.setdefault("show_progress", False)
    return SpectralAnalysis(model=model, **kw).run()


def _alphas(res):
    t = res.table.set_index("name")
    return t["alpha"].astype(float)


def test_sharded_checkpoint_read_through_its_index(ckpt):
    d, info = ckpt
    s = load_subject(d)
    assert [Path(f).name for f in s.files] == [Path(f).name for f in info["files"]]
    assert len(info["files"]) == 3 and s.index.name == "model.safetensors.index.json"
    names = [w.name for w in s.weights()]
    assert len(names) == info["matrices"] == 14
    # read order: shard by shard, each from start to end
    pos = s.storage_order()
    order = sorted(names, key=pos.get)
    assert [pos[n][0] for n in order] == sorted(pos[n][0] for n in order)
    # a stray file next to the shards is not part of the model
    extra = d / "zz-stray.safetensors"
    save_file({"stray.weight": torch.randn(64, 64)}, extra)
    try:
        assert "stray.weight" not in {w.name for w in load_subject(d).weights()}
    finally:
        extra.unlink()


def test_sharded_results_equal_per_matrix_kernels(ckpt):
    """Every alpha of the analysis (threads, prefetcher, batched eigensolves) equals the kernels'
    alpha of that matrix on its own (float64 and float32), and FARMS likewise."""
    d, _ = ckpt
    s = load_subject(d)
    for dtype, tol in (("float64", 1e-9), ("float32", 1e-6)):
        res = run(str(d), dtype=dtype, farms=True, num_workers=2)
        assert (res.table["status"] == "ok").all()
        for _, row in res.table.iterrows():
            w = s.tensor(row["name"]).to(getattr(torch, dtype))
            ev = K.batched_eigenvalues(w[None], getattr(torch, dtype)).reshape(-1)
            plain = K.fit_power_law(torch.sort(ev).values.double(), "ks").alpha
            assert row["alpha_plain"] == pytest.approx(plain, rel=tol, abs=tol)
            ref = torch.sort(ev).values.double().numpy()
            # float64: the same LAPACK calls, the same numbers. float32: batched and one-matrix
            # solves may take different MKL code paths on some CPUs (AVX-512 on AMD EPYC): equal to
            # float32 round-off relative to the largest eigenvalue
            atol = 0.0 if dtype == "float64" else 64 * np.finfo(np.float32).eps * ref.max()
            np.testing.assert_allclose(res.esd(row["name"]), ref, rtol=1e-12, atol=atol)
            fe = FA.farms_eigenvalues(w, 100, 2.0, 10, getattr(torch, dtype)).double()
            assert row["alpha"] == pytest.approx(K.fit_power_law(fe, "ks").alpha, rel=tol, abs=tol)


def test_batched_groups_equal_one_matrix_per_task(ckpt, monkeypatch):
    """Grouping same-shaped matrices into one eigensolve changes no number (CPU: LAPACK per slice)."""
    d, _ = ckpt
    monkeypatch.setitem(SA.GROUP_BYTES, "other", 0)  # one matrix per task, as before
    single = run(str(d), dtype="float64", randomize=True)
    monkeypatch.setitem(SA.GROUP_BYTES, "other", 64 * 2**20)  # every same-shaped matrix together
    subject = load_subject(d)
    groups = SA._groups(
        SpectralAnalysis(model=str(d)).selected(subject),
        SpectralAnalysis(min_evals=8, max_evals=15000, max_N=50000).settings(),
        64 * 2**20,
    )
    assert max(len(g) for g in groups) >= 4  # q, k, v, o of both blocks share a shape
    grouped = run(str(d), dtype="float64", randomize=True)
    cols = ["alpha", "xmin", "D", "lambda_max", "stable_rank", "entropy", "rand_distance", "sigma_mp"]
    a = single.table.set_index("name")[cols]
    b = grouped.table.set_index("name").loc[a.index, cols]
    np.testing.assert_array_equal(a.to_numpy(float), b.to_numpy(float))


def test_demo_models_unchanged_by_grouping(monkeypatch):
    for name, kw in (("mlp", {"farms": True}), ("cnn", {"randomize": True})):
        monkeypatch.setitem(SA.GROUP_BYTES, "other", 0)
        one = run(name, **kw).table
        monkeypatch.setitem(SA.GROUP_BYTES, "other", 64 * 2**20)
        many = run(name, **kw).table
        np.testing.assert_array_equal(one["alpha"].to_numpy(float), many["alpha"].to_numpy(float))
        assert list(one["status"]) == list(many["status"])


@pytest.mark.parametrize(
    "shape, r, q",
    [((300, 900), 100, 2.0), ((900, 300), 100, 2.0), ((250, 260), 40, 1.0), ((64, 700), 100, 2.0)],
)
def test_device_batched_farms_windows_equal_the_loop(shape, r, q):
    """The accelerator path of FARMS (every window in one batched Gram product and one eigensolve),
    run here on CPU tensors, gives the loop's eigenvalues."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g, dtype=torch.float64) * torch.rand(
        shape, generator=g, dtype=torch.float64
    )
    loop = FA.farms_eigenvalues(w, r, q, 10, torch.float64)
    rr, c, rs, cs = FA.window_grid(*shape, r, q, 10)
    batched = FA._windows_batched(w, rr, c, rs, cs)
    assert batched.shape == loop.shape
    np.testing.assert_allclose(batched.numpy(), loop.numpy(), rtol=1e-9, atol=1e-12)
    a, b = K.fit_power_law(loop, "ks").alpha, K.fit_power_law(batched, "ks").alpha
    assert a == pytest.approx(b, rel=1e-6)


def test_host_small_eigh_matches_device_eigvalsh():
    grams = torch.randn(7, 60, 80, dtype=torch.float64)
    grams = grams @ grams.mT
    ours = K.eigvalsh_batch(grams)
    np.testing.assert_allclose(ours.numpy(), torch.linalg.eigvalsh(grams).numpy(), rtol=1e-10, atol=1e-9)


# ----------------------------------------------------------------------------- index errors
def _shards(d: Path) -> None:
    d.mkdir()
    save_file({"a.weight": torch.randn(32, 16)}, d / "model-00001-of-00002.safetensors")
    save_file({"b.weight": torch.randn(16, 32)}, d / "model-00002-of-00002.safetensors")


@pytest.mark.parametrize(
    "index, part",
    [
        ("{not json", "not valid JSON; expected a Hugging Face safetensors index"),
        ("[1, 2]", "no weight_map object"),
        ('{"weight_map": {}}', "no weight_map object"),
        ('{"weight_map": {"a.weight": 3}}', "mapped to a int"),
        (
            '{"weight_map": {"a.weight": "../../etc/passwd"}}',
            "is not a .safetensors file name in this directory",
        ),
        ('{"weight_map": {"a.weight": "sub/x.safetensors"}}', "is not a .safetensors file name"),
        (
            '{"weight_map": {"a.weight": "missing.safetensors"}}',
            "names shard 'missing.safetensors', which is not in",
        ),
        (
            '{"weight_map": {"a.weight": "model-00002-of-00002.safetensors"}}',
            "tensor 'a.weight' is mapped to shard 'model-00002-of-00002.safetensors', which does not hold it",
        ),
        ('{"weight_map": {"a.weight": "x\\nq.safetensors"}}', "is not a .safetensors file name"),
    ],
)
def test_index_problems_one_line(tmp_path, index, part):
    d = tmp_path / "m"
    _shards(d)
    (d / "model.safetensors.index.json").write_text(index)
    with pytest.raises(NNVitalsError) as info:
        load_subject(d)
    msg = str(info.value)
    assert part in msg and "\n" not in msg and "model.safetensors.index.json" in msg


def test_index_selects_the_shard_of_a_duplicated_tensor(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a.weight": torch.zeros(32, 16)}, d / "model-00001-of-00002.safetensors")
    save_file({"a.weight": torch.ones(32, 16)}, d / "model-00002-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "model-00001-of-00002.safetensors"}})
    )
    assert float(load_subject(d).tensor("a.weight").sum()) == 0.0


# ----------------------------------------------------------------------------- prefetcher
def test_prefetcher_reads_ahead_within_budget(ckpt):
    d, _ = ckpt
    s = load_subject(d)
    pos = s.storage_order()
    refs = sorted(s.weights(), key=lambda r: pos[r.name])
    biggest = max(SA.math.prod(r.shape) * 2 for r in refs)
    p = Prefetcher(s, refs, budget=2 * biggest)
    try:
        deadline = time.monotonic() + 10
        while p.stats["prefetched"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert p.stats["peak_held"] <= 2 * biggest  # bounded while nobody takes anything
        for r in refs:
            t = p.get(r.name)
            assert torch.equal(t, s.tensor(r.name))
        assert p.stats["prefetched"] + p.stats["direct"] == len(refs)
        assert p.stats["prefetched"] >= 2
    finally:
        p.close()
    assert not p._thread.is_alive()


def test_prefetcher_out_of_order_and_concurrent_never_blocks(ckpt):
    d, _ = ckpt
    s = load_subject(d)
    refs = list(s.weights())
    p = Prefetcher(s, refs, budget=1)  # room for one tensor: tasks asking out of order read their own
    got = {}
    try:

        def take(names):
            for n in names:
                got[n] = p.get(n)

        names = [r.name for r in refs][::-1]
        ts = [threading.Thread(target=take, args=(names[i::3],)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in ts)
        assert set(got) == set(names)
        assert all(torch.equal(got[n], s.tensor(n)) for n in names)
        assert torch.equal(p.get(names[0]), got[names[0]])  # asked twice: read again
    finally:
        p.close()


def test_prefetcher_hands_read_errors_to_the_task(tmp_path):
    d = tmp_path / "m"
    _shards(d)
    s = load_subject(d)
    refs = list(s.weights())
    shard = d / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 64])  # truncated after the header was read
    p = Prefetcher(s, refs)
    try:
        with pytest.raises(NNVitalsError, match="truncated while reading tensor 'b.weight'"):
            p.get("b.weight")
        assert p.get("a.weight").shape == (32, 16)
    finally:
        p.close()


def test_prefetcher_is_closed_after_a_run(ckpt):
    d, _ = ckpt
    a = SpectralAnalysis(model=str(d), cache=False, show_progress=False)
    a.run()
    assert "_source" not in a.__dict__
    assert not any(t.name == "nnvitals-prefetch" and t.is_alive() for t in threading.enumerate())


def test_pinned_read_equals_plain_read(ckpt):
    d, _ = ckpt
    s = load_subject(d)
    name = s.weights()[0].name
    if not torch.cuda.is_available():
        # page-locked memory needs a CUDA driver; the reader's own out= path is what it uses
        r = s._readers()[name]
        dtype, shape, _, _ = r.entries[name]
        out = r.read(name, out=torch.empty(shape, dtype=dtype))
        assert torch.equal(out, s.tensor(name))
        with pytest.raises(ValueError, match="out must be a contiguous CPU"):
            r.read(name, out=torch.empty((1,), dtype=dtype))
    else:
        t = s.tensor_pinned(name)
        assert t.is_pinned() and torch.equal(t, s.tensor(name))


@pytest.mark.slow
def test_dask_two_workers_stream_the_same_alphas(ckpt, tmp_path):
    """Two local Dask worker processes read their own matrices from the shared path."""
    from distributed import LocalCluster

    d, _ = ckpt
    copy = tmp_path / "shared"
    shutil.copytree(d, copy)
    local = run(str(copy), farms=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        remote = run(str(copy), farms=True, runner=cluster.scheduler_address)
    a, b = _alphas(local), _alphas(remote).loc[_alphas(local).index]
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9)
