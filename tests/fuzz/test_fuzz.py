"""Malformed models and data must end in a one-line NNVitalsError: never a traceback, a hang,
a memory blow-up or code execution (issue 10).

One harness run (two worker subprocesses) covers every explicit kind of every family once plus a
few seeded random mutations; ``test_family`` asserts per family that none failed and prints the
family's table. ``test_payload_refused`` names each code-running payload (pickles calling
``os.system``, Python in ``.pt2`` shape expressions and guards, an AOTInductor shared object
whose constructor writes a file, ...) as its own test: the case must pass and its marker file
must never appear. ``test_payloads_are_live`` proves those payloads do run when fed to the
unsafe loaders directly, and ``test_harness_detects`` that the harness notices every kind of
failure, so a passing run means something. ``tests/benchmarks/fuzz_inputs.py`` runs thousands
of cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from . import generators as G
from . import harness as H

SEED = 0
FAMILIES = [f for f in G.FAMILIES if not G.FAMILIES[f].hidden]

#: (family, kind) of every case whose file carries code that must never run
PAYLOADS = [
    ("state_dict", "pickle-os-system"),
    ("state_dict", "pickle-posix-system"),
    ("state_dict", "pickle-subprocess-call"),
    ("state_dict", "pickle-os-system-stack-global"),
    ("state_dict", "pickle-torch-serialization-os-system"),
    ("state_dict", "pickle-builtins-exec"),
    ("state_dict", "pickle-builtins-eval"),
    ("state_dict", "pickle-system-inside-dict"),
    ("state_dict", "pickle-evil-storage-type"),
    ("state_dict", "legacy-evil"),
    ("state_dict", "legacy-evil-after-magic"),
    ("state_dict", "plain-pickle-evil-pth"),
    ("state_dict", "zip-duplicate-names"),
    ("pt2", "aoti-so-constructor"),
    ("pt2", "aoti-so-other-name"),
    ("pt2", "aoti-cpp-compile-flags"),
    ("pt2", "expr-str-os-system"),
    ("pt2", "expr-str-lambda"),
    ("pt2", "expr-str-in-sum"),
    ("pt2", "expr-str-range-constraint"),
    ("pt2", "guards-code-os-system"),
    ("pt2", "tensor-meta-size-expr"),
    ("pt2", "node-target-os-system"),
    ("pt2", "node-args-os-system-string"),
    ("pt2", "opaque-obj-pickle"),
    ("pt2", "custom-obj-pickle"),
    ("pt2", "custom-obj-torch-zip"),
    ("pt2", "tensor-constant-pickle"),
    ("pt2", "weights-use-pickle"),
    ("pt2", "weights-use-pickle-torch-zip"),
    ("pt2", "sample-inputs-evil"),
    ("pt2", "legacy-weights-pt-evil"),
    ("pt2", "legacy-format-evil"),
    ("hf_dir", "bin-evil-pickle"),
    ("hf_dir", "bin-legacy-evil"),
    ("hf_dir", "pt2-expr-evil"),
    ("npz", "object-array-x"),
    ("npz", "object-array-both-evil"),
    ("npz", "duplicate-members"),
    ("result", "arrays-object-evil"),
    ("result", "table-object-evil"),
]


def _kind_index(family: str, kind: str) -> int:
    return next(i for i, (k, _, _) in enumerate(G.FAMILIES[family].explicit) if k == kind)


def _all_targets(family: str, kind: str) -> list[G.Case]:
    """The case of ``kind`` once with each of its family's targets (a payload may only fire when the
    model is run, e.g. ``guards_code``)."""
    fam = G.FAMILIES[family]
    k, i = len(fam.explicit), _kind_index(family, kind)
    cases = [G.make_case(family, i + r * k) for r in range(len(fam.targets))]
    assert {c.target for c in cases} == set(fam.targets) and {c.kind for c in cases} == {kind}
    return cases


def _wanted_families(session: pytest.Session) -> list[str]:
    """The families the selected tests look at (so ``-k safetensors`` runs only that family)."""
    wanted = set()
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "family" in params:
            wanted.add(params["family"])
        if "payload" in params:
            wanted.add(params["payload"][0])
    return [f for f in FAMILIES if f in wanted]


@pytest.fixture(scope="session")
def fuzz_base(tmp_path_factory) -> Path:
    return G.build_base(tmp_path_factory.mktemp("fuzz-base"))


@pytest.fixture(scope="session")
def suite_results(request, fuzz_base) -> dict[str, list[H.CaseResult]]:
    """One harness run over the families the selected tests need: every explicit kind + 4 random."""
    families = _wanted_families(request.session) or FAMILIES
    cases = G.suite_cases(families, random_per_family=4)
    seen = {(c.family, c.index) for c in cases}
    for family, kind in PAYLOADS:
        if family in families:
            cases += [c for c in _all_targets(family, kind) if (c.family, c.index) not in seen]
    results = H.run_cases(cases, seed=SEED, workers=2, base=fuzz_base)
    out: dict[str, list[H.CaseResult]] = {f: [] for f in families}
    for r in results:
        out[r.family].append(r)
    return out


def test_suite_size():
    """A few hundred cases with every family and every explicit kind represented."""
    cases = G.suite_cases(random_per_family=4)
    assert 300 <= len(cases) <= 900
    assert {c.family for c in cases} == set(FAMILIES)
    for f in FAMILIES:
        kinds = {c.kind for c in cases if c.family == f}
        assert kinds >= {k for k, _, _ in G.FAMILIES[f].explicit}


def test_cases_are_deterministic(tmp_path, fuzz_base):
    """The same (seed, case id) writes the same bytes, whichever process writes it."""
    for case in (G.make_case("safetensors", 500), G.make_case("npz", 700), G.make_case("pt2", 900)):
        digests = []
        for run in range(2):
            d = tmp_path / f"{case.case_id}-{run}"
            G.write_case(case, SEED, d, fuzz_base, tmp_path / "MARKER")
            digests.append(sorted((p.name, p.read_bytes()) for p in d.rglob("*") if p.is_file()))
        assert digests[0] == digests[1], case.case_id


def test_benchmark_default_is_large_enough():
    """The script's default run has at least 2,000 cases over every family."""
    cases = G.build_cases(2400)
    assert len(cases) >= 2000
    assert {c.family for c in cases} == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_family(family, suite_results):
    results = suite_results[family]
    assert results
    print()
    print(H.format_table(results))
    failures = [r for r in results if r.failed]
    assert not failures, f"{len(failures)} of {len(results)} {family} cases failed:\n" + H.format_failures(
        results
    )


@pytest.mark.parametrize("payload", PAYLOADS, ids=[f"{f}-{k}" for f, k in PAYLOADS])
def test_payload_refused(payload, suite_results):
    """Each code-carrying file, under every target of its family, is refused (or read without
    running it) and its marker never appears."""
    family, kind = payload
    results = [r for r in suite_results[family] if r.kind == kind]
    assert {r.target for r in results} == set(G.FAMILIES[family].targets)
    if all(r.status == "skipped" for r in results):
        pytest.skip("; ".join(results[0].notes))
    ran = [f"{r.case_id} [{r.target}]: {r.problems}" for r in results if r.status == "marker"]
    assert not ran, f"the payload ran: {ran}"
    failed = [f"{r.case_id} [{r.target}] {r.status}: {'; '.join(r.problems)}" for r in results if r.failed]
    assert not failed, "\n".join(failed)


_LIVE = r"""
import json, os, sys
for kind, path, marker in json.loads(sys.argv[1]):
    os.environ["NNV_FUZZ_MARKER"] = marker
    try:
        if kind == "pickle":
            import pickle
            pickle.loads(open(path, "rb").read())
        elif kind == "torch-unsafe":
            import torch
            torch.load(path, weights_only=False)
        elif kind == "npz-unsafe":
            import numpy as np
            np.load(path, allow_pickle=True)["x"]
        elif kind == "so":
            import ctypes
            ctypes.CDLL(path)
        elif kind == "sympify":
            import sympy
            sympy.sympify(open(path).read())
        elif kind == "pt2-unsafe":
            import torch
            torch.export.load(path)
        elif kind == "pt2-unsafe-run":
            import torch
            torch.export.load(path).module()(torch.rand(2, 1, 8, 8))
    except BaseException as e:
        print(kind, "raised", type(e).__name__)
"""


@pytest.mark.slow
def test_payloads_are_live(tmp_path, fuzz_base):
    """Positive controls: fed to the unsafe loaders directly, the payloads do touch their markers.

    Without this a broken payload would make every refusal test pass vacuously."""
    jobs = []

    def add(loader: str, family: str, kind: str, key: str) -> None:
        case = G.make_case(family, _kind_index(family, kind))
        d = tmp_path / f"{family}-{kind}"
        marker = d.with_name(d.name + "-MARKER")
        kw, _ = G.write_case(case, SEED, d, fuzz_base, marker)
        jobs.append((loader, kw[key], str(marker)))

    add("pickle", "state_dict", "legacy-evil", "model")
    add("torch-unsafe", "state_dict", "pickle-os-system", "model")
    add("npz-unsafe", "npz", "object-array-x", "data")
    add("pt2-unsafe", "pt2", "expr-str-os-system", "model")
    add("pt2-unsafe", "pt2", "opaque-obj-pickle", "model")
    add("pt2-unsafe-run", "pt2", "guards-code-os-system", "model")
    env = G.Env(tmp_path, fuzz_base, G.case_rng(0, "x", 0), tmp_path / "sympify-MARKER", "spectra")
    (tmp_path / "expr.txt").write_text(env.py_payload())
    jobs.append(("sympify", str(tmp_path / "expr.txt"), str(env.marker)))
    if G.have_so(fuzz_base):
        jobs.append(("so", str(fuzz_base / "ctor.so"), str(tmp_path / "so-MARKER")))
        add("pt2-unsafe", "pt2", "aoti-so-constructor", "model")
    out = subprocess.run(
        [sys.executable, "-c", _LIVE, json.dumps(jobs)], timeout=600, capture_output=True, text=True
    )
    dead = [(loader, path) for loader, path, marker in jobs if not Path(marker).exists()]
    assert not dead, f"payloads that did not run: {dead}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


@pytest.mark.slow
def test_harness_detects(fuzz_base):
    """The harness classifies each way a case can fail (self-test targets that misbehave on purpose)."""
    cases = [G.make_case("selftest", i) for i in range(len(G.FAMILIES["selftest"].explicit))]
    limit = (H.RSS_LIMIT // 2) + (300 << 20)
    results = {
        r.kind: r
        for r in H.run_cases(cases, base=fuzz_base, time_limit=2.0, timeout=5.0, rss_limit=limit, warm=False)
    }
    expected = {
        "pass": "pass",
        "nnv": "pass",
        "uncaught": "uncaught",
        "bad-message": "bad_message",
        "marker": "marker",
        "memory": "memory",
        "slow": "over_time",
        "hang": "hang",
        "crash": "crash",
        "exit": "uncaught",
    }
    got = {k: r.status for k, r in results.items()}
    assert got == expected, {k: (r.status, r.problems) for k, r in results.items()}
    assert results["uncaught"].where.startswith("tests/fuzz/generators.py:")
    assert "generators.py" in results["hang"].where, results["hang"].where  # stack dumped before the kill
    assert results["memory"].peak_kb > results["memory"].baseline_kb + 600 * 1024
    assert 0 < results["pass"].peak_kb < H.RSS_LIMIT // 1024


def test_message_rules():
    assert H.message_problem("model.pt: not a state dict", G.CANARY) == ""
    assert H.message_problem("a\nb", G.CANARY)
    assert H.message_problem("x" * 2000, G.CANARY)
    assert H.message_problem(f"bad header {G.CANARY}", G.CANARY)
    assert H.message_problem("invalid load key '\x00'", G.CANARY)


@pytest.mark.slow
def test_harness_fresh_process_per_case(fuzz_base):
    """The fallback without a VmHWM reset: one worker per case still measures each case's peak."""
    cases = [G.make_case("selftest", _kind_index("selftest", k)) for k in ("pass", "memory", "uncaught")]
    limit = (H.RSS_LIMIT // 2) + (300 << 20)
    results = {
        r.kind: r for r in H.run_cases(cases, base=fuzz_base, rss_limit=limit, warm=False, fresh_process=True)
    }
    assert {k: r.status for k, r in results.items()} == {
        "pass": "pass",
        "memory": "memory",
        "uncaught": "uncaught",
    }
    assert results["pass"].peak_kb < results["memory"].peak_kb - 600 * 1024
