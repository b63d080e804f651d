"""Fuzz harness: seeded malformed models and data run through nnvitals in worker processes.

``generators`` builds the cases (family, case id, a writer, a target), ``harness`` runs them in
a small pool of worker subprocesses with a wall-clock timeout, a per-case peak-RSS measurement
and marker-file checks. ``tests/fuzz/test_fuzz.py`` runs a few hundred of them in the test suite;
``tests/benchmarks/fuzz_inputs.py`` runs thousands.
"""
