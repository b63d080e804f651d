"""CLI outputs that never lie: a set of files is complete or absent, and write errors name the file.

Real faults on real ``nnvitals`` processes: Ctrl-C (SIGINT) while figures are being written, a
full disk (a small tmpfs, where this machine lets the test mount one), a file-size limit
(``RLIMIT_FSIZE``: ``File too large``, no privileges needed), a read-only ``--out``, and ENOSPC
from ``/dev/full`` for the export layer. Plus the Spectra robustness and the user patterns
through the command line.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import NNVITALS, assert_one_error_line, run_all
from safetensors.torch import save_file

from analyses.core.export import OutputWriteError, write_into
from dashboard import cli

STAGE_GLOB = ".nnvitals-partial-*"
FIGURES = ("alpha_by_layer", "esd_grid")  # main_figures of a spectra run without FARMS


# --------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(128, 64, generator=g) * 0.05
    huge_entry, bit_flip = normal.clone(), normal.clone()
    huge_entry[3, 5] = 3e38
    bit_flip[10, 10] = 1e20  # LAPACK failed on its Gram matrix
    nan = torch.randn(64, 32, generator=g)
    nan[0, 0] = math.nan
    save_file(
        {
            "a_normal.weight": normal,
            "b_huge_entry.weight": huge_entry,
            "c_bit_flip.weight": bit_flip,
            "d_all_huge.weight": torch.randn(96, 48, generator=g) * 1e37,
            "e_conv_huge.weight": torch.randn(32, 16, 3, 3, generator=g) * 1e36,
            "f_nan.weight": nan,
        },
        str(d / "robust.safetensors"),
    )
    save_file(
        {"a" * 40 + "!": torch.randn(64, 32, generator=g), "fc.weight": torch.randn(64, 32, generator=g)},
        str(d / "names.safetensors"),
    )
    (d / "afile").write_text("not a directory\n")
    return {"robust": d / "robust.safetensors", "names": d / "names.safetensors", "afile": d / "afile"}


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory) -> tuple[dict[str, subprocess.CompletedProcess], Path]:
    out = tmp_path_factory.mktemp("out")
    cases = {
        "robust": ["spectra", inputs["robust"], "--farms", "--formats", "svg", "--out", out / "robust"],
        "evil_layers": ["spectra", inputs["names"], "--layers", "(a+)+$|^fc", "--formats", "svg", "--out",
                        out / "evil"],
    }  # fmt: skip
    return run_all(cases, tmp_path_factory.mktemp("cache")), out


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    """``nnvitals ARGS`` in this process (the same main() the console script calls): (code, stdout, stderr)."""
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NNVITALS_DEBUG", raising=False)

    def call(*args):
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _no_stage_left(d: Path) -> None:
    assert not list(d.glob(STAGE_GLOB)) and not list(d.glob(".*.tmp")), sorted(p.name for p in d.iterdir())


# --------------------------------------------------------------------------- Spectra robustness, patterns
def test_spectra_survives_extreme_layers(runs):
    done, out = runs
    run = done["robust"]
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    t = pd.read_csv(out / "robust" / "spectra.csv").set_index("name")
    assert t.loc["f_nan.weight", "status"] == "skipped" and "NaN/Inf" in t.loc["f_nan.weight", "skip_reason"]
    assert (t.drop(index="f_nan.weight")["status"] == "ok").all()
    assert t.loc["b_huge_entry.weight", "lambda_max"] == pytest.approx(9e76, rel=1e-5)
    assert "skipped: f_nan.weight (non-finite values" in run.stdout
    _no_stage_left(out / "robust")


def test_catastrophic_layer_pattern_runs_in_linear_time(runs):
    done, out = runs
    run = done["evil_layers"]
    assert run.returncode == 0, run.stderr
    assert list(pd.read_csv(out / "evil" / "spectra.csv")["name"]) == ["fc.weight"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["spectra", "mlp", "--layers", r"(a)\1"], "'(a)\\\\1': not supported: backreferences"),
        (["spectra-compare", "mlp", "mlp", "--layers", "(?<=fc)1"], "not supported: lookahead"),
        (["spectra", "mlp", "--layers", "x{5000}"], "too complex"),
    ],
)
def test_unsupported_layer_patterns_are_one_line(main, tmp_path, args, words):
    code, out, err = main(*args, "--out", tmp_path / "x")
    assert code == 2 and out == ""
    assert_one_error_line(err, "argument --layers: ")
    assert words in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args",
    [["spectra-compare", "mlp", "mlp"], ["orbits", "cnn"], ["ibp", "mlp"], ["lipschitz", "mlp"],
     ["connectivity", "mlp", "mlp"], ["spectra", "mlp"]],
)  # fmt: skip
def test_out_is_a_file_for_every_command(main, inputs, args):
    code, out, err = main(*args, "--out", inputs["afile"])
    assert code == 1 and out == ""
    assert_one_error_line(err, "is a file; expected a directory")
    code, out, err = main(*args, "--out", inputs["afile"] / "sub")
    assert code == 1
    assert_one_error_line(err, f"--out {inputs['afile'] / 'sub'}: cannot create the directory")


# --------------------------------------------------------------------------- helpers for the fault tests
def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, NNVITALS_CACHE=str(cache))
    env.pop("NNVITALS_DEBUG", None)
    return env


def _nnvitals(args: list, cache: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(NNVITALS), *map(str, args)], capture_output=True, text=True, env=_env(cache), timeout=300, **kw
    )


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


def _assert_complete(d: Path, formats: list[str], layers: str = "") -> None:
    """A complete spectra set: table, result, summary (with the parameters asked for), every figure."""
    names = {p.name for p in d.iterdir()}
    expected = {"spectra.csv", "spectra.nnv", "summary.json"} | {f"{s}.{f}" for s in FIGURES for f in formats}
    assert names == expected, sorted(names)
    assert json.loads((d / "summary.json").read_text())["meta"]["params"]["layers"] == layers


def _interrupt_while_writing_figures(
    args: list, out: Path, cache: Path, sig: int = signal.SIGINT
) -> subprocess.CompletedProcess:
    """Start ``nnvitals``, wait until a new figure file shows up anywhere under ``--out`` (in its
    staging folder, or under a temporary name), send SIGINT; fails if the run ended before that."""
    old = set(out.rglob("*")) if out.is_dir() else set()
    proc = subprocess.Popen(
        [str(NNVITALS), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cache),
    )
    deadline = time.monotonic() + 240
    sent = False
    while proc.poll() is None and time.monotonic() < deadline:
        new = [p.name for p in out.rglob("*") if p not in old] if out.is_dir() else []
        if any(ext in n for n in new for ext in (".svg", ".html", ".png", ".pdf")):
            proc.send_signal(sig)
            sent = True
            break
        time.sleep(0.005)
    stdout, stderr = proc.communicate(timeout=120)
    assert sent, f"the run ended before a figure was written: {stderr}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


# --------------------------------------------------------------------------- Ctrl-C
def test_sigint_while_writing_figures_leaves_no_partial_set(main, tmp_path):
    cache = tmp_path / "cache"  # shared with ``main``: the analysis itself is cached after the first run
    many = "svg,png,pdf,html"  # several seconds of figures: time for the signal to land in the middle
    # 1. a fresh --out: nothing is left (not even the folder), or the complete set if it finished first
    fresh = tmp_path / "fresh"
    run = _interrupt_while_writing_figures(
        ["spectra", "mlp", "--formats", many, "--out", fresh], fresh, cache
    )
    if run.returncode == 130:
        assert_one_error_line(run.stderr, "interrupted")
        assert not fresh.exists(), sorted(p.name for p in fresh.iterdir())
    else:
        assert run.returncode == 0, run.stderr
        _assert_complete(fresh, many.split(","))
    # 2. over a previous complete set: that set stays, byte for byte
    kept = tmp_path / "kept"
    assert main("spectra", "mlp", "--formats", "svg", "--out", kept)[0] == 0
    _assert_complete(kept, ["svg"])
    before = _snapshot(kept)
    args = ["spectra", "mlp", "--layers", "fc1", "--formats", many, "--out", kept]
    run = _interrupt_while_writing_figures(args, kept, cache)
    if run.returncode == 130:
        assert_one_error_line(run.stderr, "interrupted")
        assert _snapshot(kept) == before
    else:
        assert run.returncode == 0, run.stderr
        _assert_complete(kept, many.split(","), layers="fc1")
    _no_stage_left(kept)


# --------------------------------------------------------------------------- write errors
def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _named(stderr: str) -> Path:
    """The file a one-line write error names."""
    return Path(stderr.strip().split("nnvitals: error: ", 1)[1].split(": cannot write", 1)[0])


def test_an_interrupt_swallowed_by_an_extension_is_still_an_interrupt(monkeypatch, capsys, tmp_path):
    """pybind11 (matplotlib's ``affine_transform``) can catch the KeyboardInterrupt raised while
    it converts arguments and raise "incompatible function arguments" (TypeError) instead; CI saw
    exit 3, "internal error", after a Ctrl-C. The run was signalled: it is reported as interrupted.
    The stand-in below does what pybind11 does, with a real SIGINT through nnvitals' handler."""

    def swallowing_extension(args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise TypeError("affine_transform(): incompatible function arguments") from None
        raise AssertionError("SIGINT did not raise KeyboardInterrupt")

    monkeypatch.setattr(cli, "run_command", swallowing_extension)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(["spectra", "mlp", "--out", str(tmp_path)]) == 130
    assert_one_error_line(capsys.readouterr().err, "interrupted")
    # the handlers of the calling program are back, and the next run starts with no signal seen
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    monkeypatch.setattr(cli, "run_command", lambda args: 1 / 0)
    assert cli.main(["spectra", "mlp", "--out", str(tmp_path)]) == 3
    assert "internal error" in capsys.readouterr().err


def test_a_write_error_names_the_file_and_leaves_no_partial_set(main, tmp_path):
    import matplotlib.font_manager  # noqa: F401  (its cache exists before the limited runs)

    cache = tmp_path / "cache"
    out = tmp_path / "out"
    limit = _limit_file_size(24_000)  # figures are 30 KB and more; table, summary and result are smaller
    run = _nnvitals(["spectra", "mlp", "--formats", "svg", "--out", out], cache, preexec_fn=limit)
    assert run.returncode == 1, run.stderr
    assert_one_error_line(run.stderr, ": cannot write (File too large)")
    assert _named(run.stderr).parent == out and _named(run.stderr).suffix == ".svg"  # its name in --out
    assert not out.exists()  # nothing new: no table, no summary, no staging folder
    # over a previous complete set: kept as it was
    assert main("spectra", "mlp", "--formats", "svg", "--out", out)[0] == 0
    before = _snapshot(out)
    run = _nnvitals(
        ["spectra", "mlp", "--layers", "fc2", "--formats", "svg", "--out", out], cache, preexec_fn=limit
    )
    assert run.returncode == 1 and "cannot write (File too large)" in run.stderr
    assert _snapshot(out) == before


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MB tmpfs (skipped where mounting is not permitted, e.g. an unprivileged container)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill the filesystem but ``leave`` bytes."""
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_disk_full_names_the_file_and_keeps_the_previous_set(main, tmpfs):
    out = tmpfs / "out"
    assert main("spectra", "mlp", "--formats", "svg", "--out", out)[0] == 0
    before = _snapshot(out)
    _fill(tmpfs, leave=16_384)
    code, stdout, err = main("spectra", "mlp", "--layers", "fc2", "--formats", "svg,png", "--out", out)
    assert code == 1 and stdout == ""
    assert_one_error_line(err, "cannot write (No space left on device)")
    assert _named(err).parent == out  # the file, by its name in --out
    assert _snapshot(out) == before
    _no_stage_left(out)
    # a fresh --out on the full disk: nothing left behind
    fresh = tmpfs / "fresh"
    code, _, err = main("spectra", "mlp", "--formats", "svg", "--out", fresh)
    assert code == 1 and "No space left on device" in err and str(fresh) in err
    assert not fresh.exists()


def test_read_only_out(main, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip("root, and cannot mount a read-only tmpfs here")
        mounted = True
    else:
        ro.chmod(0o555)
    try:
        for out, words in [
            (ro, f"--out {ro}: cannot write there ("),
            (ro / "new", f"--out {ro / 'new'}: cannot"),
        ]:
            code, stdout, err = main("spectra", "mlp", "--out", out)
            assert code == 1 and stdout == ""
            assert_one_error_line(err, words)
        assert list(ro.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        else:
            ro.chmod(0o755)


def test_enospc_from_dev_full_names_the_file():
    """The export layer's write path with a real ENOSPC (/dev/full accepts opens, refuses data)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "wb") as f, pytest.raises(OutputWriteError) as info:
        write_into(f, lambda fh: fh.write(b"x" * 100_000), Path("out/esd_grid.png"))
    assert str(info.value) == "out/esd_grid.png: cannot write (No space left on device)"
    assert info.value.path == Path("out/esd_grid.png")


def test_sigterm_while_writing_figures_leaves_no_partial_set(tmp_path):
    """``kill`` (SIGTERM, a scheduler's time limit) cleans up like Ctrl-C."""
    fresh = tmp_path / "fresh"
    run = _interrupt_while_writing_figures(
        ["spectra", "mlp", "--formats", "svg,png,pdf,html", "--out", fresh],
        fresh,
        tmp_path / "cache",
        signal.SIGTERM,
    )
    if run.returncode == 130:
        assert_one_error_line(run.stderr, "interrupted")
        assert not fresh.exists(), sorted(p.name for p in fresh.rglob("*"))
    else:
        assert run.returncode == 0, run.stderr
        _assert_complete(fresh, ["svg", "png", "pdf", "html"])
