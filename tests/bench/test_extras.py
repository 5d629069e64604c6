"""matplotlib and tqdm are the ``[bench]`` extra (sao_kernels/bench/extras.py): the runtime
imports neither, and the tooling that needs them says which extra to install.  Run in
subprocesses in which importing them fails, as in an environment without the extra."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from sao_kernels.bench import extras

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Prepended to each subprocess: importing matplotlib or tqdm (or a submodule) fails, and every
# attempt is recorded in ``_blocked.tried``.
BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        tried = []

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("matplotlib", "tqdm"):
                self.tried.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    _blocked = _Blocked()
    sys.meta_path.insert(0, _blocked)
    """
)


def run_blocked(code: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-c", BLOCK + textwrap.dedent(code)]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_runtime_works_without_the_bench_extra(tmp_path):
    proc = run_blocked(
        """
        import torch

        _blocked.tried.clear()  # (torch.hub tries tqdm, and does without it)
        import sao_kernels as sk

        layer = sk.SAOLinear(32, 64, sparsity=0.75).double()
        x = torch.randn(5, 32, dtype=torch.float64)
        ref = x @ layer.dense_weight().T + layer.bias  # float64 reference
        torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
        model = sk.convert(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh()), sparsity=0.5)
        model(torch.randn(3, 16)).sum().backward()
        assert not _blocked.tried, _blocked.tried  # sao_kernels did not even try
        print("ok")
        """,
        tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.parametrize(
    "argv, missing",
    [
        (["bench", "--out", "out"], "matplotlib and tqdm, not installed here: they are"),
        (["bench", "--no-progress", "--out", "out"], "matplotlib, not installed here: it is"),
        (["report", "--model", "mlp", "--out", "out"], "matplotlib, not installed here: it is"),
    ],
    ids=["bench", "bench-no-progress", "report"],
)
def test_the_main_job_names_the_extra_before_measuring(argv, missing, tmp_path):
    proc = run_blocked(
        f"""
        import sys
        from sao_kernels import cli

        sys.exit(cli.main({argv!r}, prog="python -m sao_kernels"))
        """,
        tmp_path,
    )
    cmd = argv[0]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"python -m sao_kernels {cmd}: this command needs {missing} in" in proc.stderr
    assert extras.INSTALL in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # stopped before anything was measured or written


def test_require_names_the_purpose_and_the_extra(monkeypatch):
    assert extras.require("tqdm.auto", "the bar").tqdm is not None  # installed here ([test] pulls [bench])
    extras.progress_bar(total=1, disable=True).close()
    for name in ("tqdm", "tqdm.auto"):
        monkeypatch.setitem(sys.modules, name, None)  # importing them now fails
    with pytest.raises(extras.MissingExtraError, match=r"the bar needs tqdm, not installed here: it is in") as e:
        extras.require("tqdm.auto", "the bar")
    assert extras.INSTALL in str(e.value) and isinstance(e.value, ImportError)
    with pytest.raises(extras.MissingExtraError, match=r"the progress bar \(--no-progress: none\) needs tqdm"):
        extras.progress_bar(total=1)
    with pytest.raises(extras.MissingExtraError, match=r"x needs tqdm, not installed here"):
        extras.check(["numpy", "tqdm"], "x")
    extras.check(["numpy"], "x")


def test_plots_name_the_extra_when_matplotlib_is_missing(monkeypatch, tmp_path):
    from sao_kernels.bench.plots import plot_speedup

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(extras.MissingExtraError, match=r"the speed-up plot needs matplotlib"):
        plot_speedup([], tmp_path / "speedup.png", title="t")
