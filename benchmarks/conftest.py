"""pytest-benchmark suites of the SAO kernels.

    pytest benchmarks --benchmark-enable --benchmark-json=bench.json    # measure
    pytest benchmarks --benchmark-enable --contention                  # + the contention cases
    pytest benchmarks                                                   # smoke (one call each)

pyproject.toml passes --benchmark-disable so the README's test command runs every benchmark
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
    parser.addoption(
        "--contention",
        action="store_true",
        default=False,
        help="run the contention benchmarks (a busy-loop process pinned on one core while timing)",
    )


def pytest_collection_modifyitems(config, items):
    """Without --contention the contention cases are deselected (not skipped: a skip in the
    suite means something that should run did not)."""
    if config.getoption("--contention", default=False):
        return
    keep, drop = [], []
    for item in items:
        (drop if "busy_core" in getattr(item, "fixturenames", ()) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def busy_core(request):
    """A busy-loop process pinned on the last usable core for the test's duration (collected
    only with --contention)."""
    from sao_kernels.bench.machine import busy_core as start

    with start() as info:
        yield info
