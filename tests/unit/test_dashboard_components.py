"""Shared components of the app without a browser: paths, uploads, jobs, export, serve options."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("panel")

from analyses.core.errors import Cancelled, NNVitalsError  # noqa: E402
from dashboard.components.export import figure_bytes, slug, table_bytes  # noqa: E402
from dashboard.components.jobs import JobPanel  # noqa: E402
from dashboard.components.model_picker import (  # noqa: E402
    ModelPicker,
    UploadSink,
    UploadTooLarge,
    check_allow_dirs,
    list_model_files,
    resolve_allowed,
    safe_filename,
)


def _model(path, rows=40, cols=20):
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    save_file(
        {"a.weight": torch.randn(rows, cols, generator=g), "b.weight": torch.randn(8, rows, generator=g)},
        path,
    )
    return path


@pytest.fixture
def dirs(tmp_path):
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    _model(allowed / "m.safetensors")
    _model(allowed / "sub" / "deep.safetensors")
    _model(outside / "secret.safetensors")
    (allowed / "notes.txt").write_text("not a model")
    os.symlink(outside / "secret.safetensors", allowed / "link-out.safetensors")
    os.symlink(allowed / "m.safetensors", allowed / "link-in.safetensors")
    os.symlink(outside, allowed / "dir-out")
    return allowed.resolve(), outside.resolve()


# --------------------------------------------------------------------------- allowed directories
def test_resolve_allowed_accepts_files_inside(dirs):
    allowed, _ = dirs
    assert resolve_allowed(allowed / "m.safetensors", [allowed]) == allowed / "m.safetensors"
    assert resolve_allowed("sub/deep.safetensors", [allowed]) == allowed / "sub" / "deep.safetensors"
    assert resolve_allowed(allowed / "link-in.safetensors", [allowed]) == allowed / "m.safetensors"


@pytest.mark.parametrize(
    "path, message",
    [
        ("../outside/secret.safetensors", "'..' is not allowed"),
        ("sub/../../outside/secret.safetensors", "'..' is not allowed"),
        ("link-out.safetensors", "outside the allowed directories"),
        ("dir-out/secret.safetensors", "outside the allowed directories"),
        ("missing.safetensors", "no such file"),
        ("", "empty"),
    ],
)
def test_resolve_allowed_refuses(dirs, path, message):
    allowed, _ = dirs
    with pytest.raises(NNVitalsError, match=message):
        resolve_allowed(path, [allowed])


def test_resolve_allowed_refuses_absolute_paths_outside(dirs):
    allowed, outside = dirs
    with pytest.raises(NNVitalsError, match="outside the allowed"):
        resolve_allowed(outside / "secret.safetensors", [allowed])
    with pytest.raises(NNVitalsError, match="allows no directories"):
        resolve_allowed(allowed / "m.safetensors", [])


def test_listing_skips_links_out_and_non_models(dirs):
    allowed, _ = dirs
    listed = list_model_files([allowed])
    names = sorted(listed)
    assert names == sorted(
        ["allowed/m.safetensors", "allowed/sub/deep.safetensors", "allowed/link-in.safetensors"]
    ), names
    assert all(str(allowed) in v for v in listed.values())


def test_check_allow_dirs(tmp_path):
    assert check_allow_dirs([tmp_path]) == (tmp_path.resolve(),)
    with pytest.raises(NNVitalsError, match="no such directory"):
        check_allow_dirs([tmp_path / "nope"])
    (tmp_path / "f").write_text("x")
    with pytest.raises(NNVitalsError, match="not a directory"):
        check_allow_dirs([tmp_path / "f"])


# --------------------------------------------------------------------------- uploads
def test_safe_filename():
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\models\\net v2.safetensors") == "net_v2.safetensors"
    assert safe_filename(".hidden.pt") == "hidden.pt"
    assert safe_filename("") == "upload"


def test_upload_sink_writes_chunks_in_any_order(tmp_path):
    sink = UploadSink(tmp_path, max_bytes=100, chunk_bytes=10)
    data = bytes(range(25))
    chunks = [data[0:10], data[10:20], data[20:25]]
    assert sink.receive("x.safetensors", 3, 3, chunks[2]) is None
    assert sink.receive("x.safetensors", 1, 3, chunks[0]) is None
    path = sink.receive("x.safetensors", 2, 3, chunks[1])
    assert path == tmp_path / "x.safetensors"
    assert path.read_bytes() == data


def test_upload_sink_refuses_past_the_limit(tmp_path):
    sink = UploadSink(tmp_path, max_bytes=25, chunk_bytes=10)
    assert sink.receive("big.pt", 1, 3, b"a" * 10) is None
    assert sink.receive("big.pt", 2, 3, b"b" * 10) is None
    with pytest.raises(UploadTooLarge, match="upload limit"):
        sink.receive("big.pt", 3, 3, b"c" * 10)
    assert not (tmp_path / "big.pt").exists()
    # announced size alone is enough to refuse (first chunk of a 10-chunk file)
    with pytest.raises(UploadTooLarge):
        sink.receive("huge.pt", 1, 10, b"a" * 10)
    assert sink.receive("huge.pt", 2, 10, b"a" * 10) is None  # the rest is dropped silently
    assert not (tmp_path / "huge.pt").exists()


def test_upload_sink_shows_a_file_only_once_complete(tmp_path):
    """Chunks go to a hidden part file; the name appears (replacing an older upload) when complete."""
    (tmp_path / "m.pt").write_bytes(b"older upload")
    sink = UploadSink(tmp_path, max_bytes=100, chunk_bytes=10)
    assert sink.receive("m.pt", 1, 2, b"a" * 10) is None
    assert (tmp_path / "m.pt").read_bytes() == b"older upload"
    assert [
        p.name.startswith(".m.pt.") and p.name.endswith(".part")
        for p in tmp_path.iterdir()
        if p.name != "m.pt"
    ] == [True]
    assert sink.receive("m.pt", 2, 2, b"b" * 3) == tmp_path / "m.pt"
    assert (tmp_path / "m.pt").read_bytes() == b"a" * 10 + b"b" * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_upload_sink_refuses_other_file_types(tmp_path):
    sink = UploadSink(tmp_path, max_bytes=100, chunk_bytes=10)
    with pytest.raises(NNVitalsError, match="not a model file"):
        sink.receive("notes.txt", 1, 1, b"hello")
    assert not list(tmp_path.iterdir())


def test_picker_upload_flow(tmp_path):
    picker = ModelPicker(max_upload_mb=1, upload_dir=tmp_path / "up")
    assert picker.model == "mlp" and "mlp" in picker.sources
    good = _model(tmp_path / "up" / "net.safetensors")
    picker._uploaded_file(good, "net.safetensors")
    assert picker.model == str(good) and picker.label == "net.safetensors"
    assert picker.sources["net.safetensors (upload)"] == str(good)
    bad = tmp_path / "up" / "junk.safetensors"
    bad.write_bytes(b"\0" * 32)
    picker._uploaded_file(bad, "junk.safetensors")
    assert "not a .safetensors file" in picker.message and not bad.exists()
    assert picker.model == str(good)  # unchanged
    picker.close()


def test_picker_accepts_state_dicts_and_exports(tmp_path):
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    up = tmp_path / "up"
    up.mkdir()
    torch.save(net.state_dict(), up / "net.pt")
    torch.export.save(torch.export.export(net, (torch.randn(2, 16),)), up / "net.pt2")
    picker = ModelPicker(upload_dir=up)
    for name in ("net.pt", "net.pt2"):
        picker._uploaded_file(up / name, name)
        assert picker.model == str(up / name), picker.message
        assert picker.message.startswith(f"Uploaded {name}: ")
    # a pickle that would run code is refused with the reader's message
    torch.save({"w": torch.zeros(2, 2), "obj": _Evil()}, up / "evil.pt")
    picker._uploaded_file(up / "evil.pt", "evil.pt")
    assert "refused" in picker.message and not (up / "evil.pt").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_picker_server_files(dirs, tmp_path):
    allowed, _ = dirs
    picker = ModelPicker(allow_dirs=[allowed], upload_dir=tmp_path / "up")
    assert "allowed/m.safetensors" in picker.sources
    picker.select("../outside/secret.safetensors")
    assert "'..' is not allowed" in picker.message and picker.model == "mlp"
    picker.select(str(allowed / "sub" / "deep.safetensors"))
    assert picker.model == str(allowed / "sub" / "deep.safetensors") and picker.label == "deep.safetensors"


def test_session_uploads_are_deleted_on_close(tmp_path):
    picker = ModelPicker()
    d = picker.upload_dir
    (d / "x.safetensors").write_bytes(b"1")
    picker.close()
    assert not d.exists()


# --------------------------------------------------------------------------- jobs (outside a server)
def test_job_panel_runs_in_place_outside_a_server():
    panel = JobPanel()
    seen = []
    panel.submit("t", lambda progress, cancel: (progress(1, 1, "x"), 42)[1], seen.append)
    assert seen == [42] and not panel.error
    panel.submit("t", lambda p, c: (_ for _ in ()).throw(NNVitalsError("bad model")), seen.append)
    assert panel.error == "bad model" and seen == [42]
    panel.submit("t", lambda p, c: (_ for _ in ()).throw(Cancelled()), seen.append)
    # a cancel is what the user asked for, not an error: said in the status, the result kept
    assert "cancelled" in panel.status and not panel.error and seen == [42]


# --------------------------------------------------------------------------- export
def test_figure_and_table_bytes():
    import holoviews as hv
    import pandas as pd

    fig = hv.Curve([1, 3, 2])
    assert b"<svg" in figure_bytes(fig, "svg")[:500]
    assert figure_bytes(fig, "png")[:4] == b"\x89PNG"
    assert figure_bytes(fig, "pdf")[:5] == b"%PDF-"
    assert b"Bokeh" in figure_bytes(fig, "html")
    with pytest.raises(NNVitalsError, match="expected one of"):
        figure_bytes(fig, "gif")
    assert table_bytes(pd.DataFrame({"a": [1], "b": ["x"]})).decode().splitlines() == ["a,b", "1,x"]
    assert slug("ESD of fc1.weight") == "esd_of_fc1.weight"


# --------------------------------------------------------------------------- serve options
def _parse(*argv):
    import argparse

    from dashboard.serve import add_serve_arguments

    return add_serve_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_serve_options(tmp_path):
    from dashboard.serve import settings_from_args

    args = _parse(
        "--port", "0", "--allow-dir", str(tmp_path), "--dask", "127.0.0.1:8786", "--num-threads", "3"
    )
    s = settings_from_args(args)
    assert s.allow_dirs == (tmp_path.resolve(),) and s.runner == "tcp://127.0.0.1:8786" and s.num_threads == 3
    assert "Dask scheduler tcp://127.0.0.1:8786" in s.runner_text
    assert settings_from_args(_parse()).max_upload_mb == 512


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--allow-dir", "/no/such/dir"], "no such directory"),
        (["--port", "70000"], "expected a port"),
        (["--dask", "nonsense"], "expected 'local' or a scheduler address"),
        (["--max-upload-mb", "-3"], "positive number"),
        (["--oauth-extra-params", "[1]"], "JSON object"),
    ],
)
def test_bad_serve_options_are_usage_errors(argv, message, capsys):
    from dashboard.serve import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_basic_auth_file_forms(tmp_path):
    from dashboard.serve import _basic_auth

    users = tmp_path / "users.json"
    users.write_text(json.dumps({"ada": "pw"}))
    assert _basic_auth(users) == str(users.resolve())
    single = tmp_path / "password.txt"
    single.write_text("s3cret\n")
    assert _basic_auth(single) == "s3cret"
    (tmp_path / "bad.json").write_text("{not json")
    for path, message in (
        (tmp_path / "missing", "no such file"),
        (tmp_path, "is a directory"),
        (tmp_path / "bad.json", "not valid JSON"),
    ):
        with pytest.raises(NNVitalsError, match=message):
            _basic_auth(path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--basic-auth", "/no/such/users.json"], "--basic-auth /no/such/users.json: no such file"),
        (["--default-model", "resnet"], "--default-model resnet: expected one of"),
        (["--oauth-provider", "github"], "also give --oauth-key and --oauth-secret"),
    ],
)
def test_bad_serve_setup_is_one_line_error(argv, message, capsys):
    from dashboard.serve import main

    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnvitals: error: ") and message in err and "\n" not in err
