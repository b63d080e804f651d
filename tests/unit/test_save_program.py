"""analyses.core.graph.save_program: how nnvitals writes a ``.pt2`` it made (an interpolated model of
the Connectivity page, a Trajectory checkpoint). A file that cannot be written is one line naming
it, never a half-written file, and never the end of the process: on a full disk PyTorch's own
file writer raised and then threw again from its destructor, which aborted the whole server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from analyses.core.errors import NNVitalsError
from analyses.core.graph import save_program


def _program() -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    return torch.export.export(nn.Sequential(nn.Linear(8, 4), nn.ReLU()).eval(), (torch.rand(2, 8),))


def test_the_saved_program_loads_and_computes_the_same(tmp_path):
    program = _program()
    file = save_program(program, tmp_path / "m.pt2")
    x = torch.rand(2, 8)
    torch.testing.assert_close(torch.export.load(str(file)).module()(x), program.module()(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]  # no temporary file left behind


def _folder_at_the_path(d):
    (d / "m.pt2").mkdir()
    return d / "m.pt2", "is a directory; expected a file name"


def _a_file_as_the_folder(d):
    (d / "f").write_text("")
    return d / "f" / "m.pt2", f"cannot write there, {d / 'f'} is a file, not a directory"


@pytest.mark.parametrize("make", [_folder_at_the_path, _a_file_as_the_folder])
def test_a_file_that_cannot_be_written_is_one_line_naming_it(tmp_path, make):
    target, reason = make(tmp_path)
    with pytest.raises(NNVitalsError) as e:
        save_program(_program(), target)
    assert str(e.value) == f"{target}: {reason}"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_is_one_line_and_the_process_goes_on(tmp_path):
    """In a process of its own whose files may not grow past 4 KB (``RLIMIT_FSIZE``, the way a full
    disk fails a write): the write fails, the error is one line, the temporary file is gone, and the
    process ends normally after a collection (PyTorch's writer aborted it there)."""
    script = textwrap.dedent(
        f"""
        import gc, resource, signal, sys
        import torch
        from torch import nn
        from analyses.core.errors import NNVitalsError
        from analyses.core.graph import save_program

        program = torch.export.export(nn.Linear(200, 200).eval(), (torch.rand(1, 200),))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            save_program(program, {str(tmp_path / "big.pt2")!r})
        except NNVitalsError as e:
            print("ERROR", e)
        gc.collect()
        print("ALIVE")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines == [f"ERROR {tmp_path / 'big.pt2'}: cannot write (File too large)", "ALIVE"]
    assert list(tmp_path.iterdir()) == []


def test_a_trajectory_checkpoint_that_is_a_program_is_copied_or_fails_in_one_line(tmp_path):
    """Trajectory.export_checkpoint copies a ``.pt2`` checkpoint as it is; where the copy cannot be
    written, one line naming the file (it was an OSError shown as a bug in nnvitals)."""
    from analyses import Trajectory

    series = tmp_path / "series"
    series.mkdir()
    for step in (1, 2):
        save_program(_program(), series / f"step_{step}.pt2")
    traj = Trajectory(series=str(series), show_progress=False)
    out = traj.export_checkpoint(2, tmp_path / "picked.pt2")
    assert out.read_bytes() == (series / "step_2.pt2").read_bytes()
    (tmp_path / "folder.pt2").mkdir()
    with pytest.raises(NNVitalsError) as e:
        traj.export_checkpoint(2, tmp_path / "folder.pt2")
    assert str(e.value) == f"{tmp_path / 'folder.pt2'}: is a directory; expected a file name"
