"""Two exports at once in one process (two app sessions, a trajectory's parallel checkpoints) both work:
every torch.export call of nnvitals holds analyses.core.threads.TRACE_LOCK."""

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from analyses.core.graph import export_program


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 10)
    ).eval()


def test_concurrent_exports_all_succeed():
    models = [_model(s) for s in range(8)]
    x = torch.rand(3, 1, 8, 8)
    with ThreadPoolExecutor(max_workers=8) as pool:
        programs = list(pool.map(lambda m: export_program(m, x, label="m", purpose="it"), models))
    for m, p in zip(models, programs, strict=True):
        torch.testing.assert_close(p.module()(x), m(x))
