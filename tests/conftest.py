"""Shared fixtures: real spectral results of small real models, and checkpoint files on disk.

Results are computed once per session without the on-disk cache (``cache=False``), so the
tests never read or write ``~/.cache/nnvitals``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

import pytest
import torch

# helpers shared by test folders (evil_pt2: hostile .pt2 archives) import from tests/ itself
sys.path.insert(0, str(Path(__file__).resolve().parent))


#: tests of a minute or so that share no module fixture: started first, so that the two workers of
#: ``pytest -n 2`` share them out at the start instead of one finishing a long one alone at the end
_LONG_FIRST = ("tests/notebooks/", "tests/gpu/test_run_script.py")


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FIRST))  # stable: order kept otherwise


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    its kernels are small, and on a shared 2-core machine two OpenMP threads spin against other
    processes (training in the connectivity tests took 12 s instead of 0.9 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spectra(model, **kw):
    from analyses.spectra.analysis import SpectralAnalysis

    return SpectralAnalysis(model=model, cache=False, show_progress=False, **kw).run()


@pytest.fixture(scope="session")
def spectra_cnn():
    """The demo CNN (Conv2d + Linear layers), with the shuffled-matrix ESDs (randomize=True)."""
    return _spectra("cnn", randomize=True)


@pytest.fixture(scope="session")
def spectra_mlp_farms():
    """The demo MLP with FARMS alphas (so the table also has alpha_plain)."""
    return _spectra("mlp", farms=True)


@pytest.fixture(scope="session")
def spectra_mlp_untrained():
    """The demo MLP's untrained twin (same layer names as ``mlp``)."""
    return _spectra("mlp-untrained")


@pytest.fixture(scope="session")
def spectra_small():
    """A seeded torch MLP whose last layer is too small to analyse (M = 4 < min_evals): one skipped row."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 96),
        torch.nn.ReLU(),
        torch.nn.Linear(96, 4),
    )
    return _spectra(model)


@pytest.fixture(scope="session")
def mlp_safetensors(tmp_path_factory) -> Path:
    """A .safetensors file of a seeded random MLP 64-128-96-10 (weights named 0/2/4.weight)."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 96),
        torch.nn.ReLU(),
        torch.nn.Linear(96, 10),
    )
    path = tmp_path_factory.mktemp("models") / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@contextlib.contextmanager
def _turn_held_elsewhere():
    from analyses.core.threads import MODEL_TURN

    release, holding = threading.Event(), threading.Event()

    def other_session() -> None:
        with MODEL_TURN.hold():
            holding.set()
            release.wait(30)

    t = threading.Thread(target=other_session, daemon=True)
    t.start()
    assert holding.wait(10)
    try:
        yield
    finally:
        release.set()
        t.join(10)


@pytest.fixture
def turn_held_elsewhere():
    """``with turn_held_elsewhere():`` another session's run holds the model turn
    (:data:`analyses.core.threads.MODEL_TURN`) until the block ends."""
    return _turn_held_elsewhere
