"""pytest-benchmark suites of the SAO kernels.

    pytest benchmarks --benchmark-enable --benchmark-json=bench.json    # measure
    pytest benchmarks --benchmark-enable --contention                  # + the contention cases
    pytest benchmarks                                                   # smoke (one call each)

pytest.ini passes --benchmark-disable so the README's test command runs every benchmark
once as a smoke test; --benchmark-enable turns the measurement on.  The contention cases (a
busy-loop process pinned on one core while timing) run only with --contention.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Lets the triton rows of the suite run in the interpreter when asked for explicitly.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--contention", action="store_true", default=False,
                     help="run the contention benchmarks (a busy-loop process pinned on one core while timing)")


@pytest.fixture
def busy_core(request):
    """A busy-loop process pinned on the last usable core for the test's duration; skips
    the test unless pytest runs with --contention."""
    if not request.config.getoption("--contention", default=False):
        pytest.skip("contention case: run with --contention")
    from sao_kernels.bench.machine import busy_core as start

    with start() as info:
        yield info
