"""Backend selection (sao_kernels/dispatch.py): the SAO_KERNELS_BACKEND variable, the
``sao_kernels.backend`` block, the policy table of "auto", and that the C++ CPU kernels apply
the same policy as the Python one."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading

import pytest
import torch

import sao_kernels as sk
from sao_kernels import _extension, dispatch
from sao_kernels.dispatch import AUTO, BACKENDS, ENV_VAR, NATIVE_DTYPES, requested_backend, resolve_backend, select

CPU = torch.device("cpu")
OPS = torch.ops.sao_kernels
NATIVE = _extension.available()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _layer_args():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 24, generator=g, dtype=torch.float64)
    v = torch.randn(2, 4, 12, generator=g, dtype=torch.float64)
    return x, v, torch.randperm(24, generator=g), None


def _policy_expected(dtype, cls):
    """What "auto" should pick on CPU: the CPU_POLICY row for this tier, else AUTO's cpu row."""
    chosen = dispatch.cpu_policy(dtype, cls)
    if chosen == "native" or chosen is None:
        return "native" if NATIVE else "torch"
    return chosen


def test_default_is_auto_and_auto_on_cpu_follows_the_policy_table():
    assert requested_backend() == "auto"
    for dtype in NATIVE_DTYPES:
        for tokens, flops, cls in (
            (1, 1e3, "decode"),
            (64, 1e6, "small"),
            (512, 1e8, "train"),
            (512, 1e10, "large"),
            (None, None, "train"),
        ):
            assert dispatch.shape_class(tokens, flops) == cls
            assert select(CPU, dtype, tokens=tokens, flops=flops) == _policy_expected(dtype, cls)
    assert resolve_backend(CPU) == _policy_expected(torch.float32, "train")
    assert AUTO["cpu"][0][0] == "native" and AUTO["cuda"][0][0] == "triton"


def test_cpu_policy_rows_name_real_tiers_dtypes_classes_and_backends():
    from sao_kernels.cpu import TIERS

    for tiers, dtypes, classes, name in dispatch.CPU_POLICY:
        assert tiers is None or set(tiers) <= set(TIERS)
        assert dtypes is None or all(isinstance(d, torch.dtype) for d in dtypes)
        assert classes is None or set(classes) <= set(dispatch.SHAPE_CLASSES)
        assert name in BACKENDS and name != "auto"
    # the tier decides: a row for one tier does not apply on another
    for tier in TIERS:
        for cls in dispatch.SHAPE_CLASSES:
            assert dispatch.cpu_policy(torch.float64, cls, tier) == "native"


@pytest.mark.parametrize("name", ["torch", "dense", "auto"])
def test_env_var_sets_default(monkeypatch, name):
    monkeypatch.setenv(ENV_VAR, name)
    assert requested_backend() == name
    assert resolve_backend(CPU) == (("native" if NATIVE else "torch") if name == "auto" else name)


def test_env_var_is_case_and_space_insensitive(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "  Dense ")
    assert requested_backend() == "dense"
    monkeypatch.setenv(ENV_VAR, "")
    assert requested_backend() == "auto"


def test_context_manager_overrides_env_and_nests(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "dense")
    with sk.backend("torch"):
        assert requested_backend() == "torch"
        with sk.backend("dense"):
            assert requested_backend() == "dense"
            with sk.backend("auto"):
                assert resolve_backend(CPU) == ("native" if NATIVE else "torch")
            assert requested_backend() == "dense"
        assert requested_backend() == "torch"
    assert requested_backend() == "dense"


def test_context_manager_restores_after_exception():
    with pytest.raises(KeyError):
        with sk.backend("dense"):
            raise KeyError("boom")
    assert requested_backend() == "auto"


def test_context_manager_is_thread_local():
    seen = {}

    def worker():
        seen["other"] = requested_backend()
        if NATIVE:  # the C++ kernels' copy of the request is per thread too
            seen["other_native_runs"] = bool(OPS._native_runs(torch.float32))

    with sk.backend("dense"):
        t = threading.Thread(target=worker)
        t.start()
        t.join(10)
        seen["main"] = requested_backend()
    assert seen["other"] == "auto" and seen["main"] == "dense"
    if NATIVE:
        assert seen["other_native_runs"] is True


def test_unknown_backend_name_in_context_raises_value_error_listing_allowed():
    with pytest.raises(ValueError) as err:
        with sk.backend("cuda"):
            pass  # pragma: no cover
    msg = str(err.value)
    assert "'cuda'" in msg
    for name in BACKENDS:
        assert repr(name) in msg
    assert requested_backend() == "auto"  # nothing was pushed


def test_unknown_backend_name_in_env_raises_value_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cublas")
    x, v, ii, oi = _layer_args()
    with pytest.raises(ValueError) as err:
        OPS.linear(x, v, ii, oi, None, 1)
    msg = str(err.value)
    assert ENV_VAR in msg and "'cublas'" in msg
    for name in BACKENDS:
        assert repr(name) in msg


@pytest.mark.parametrize("how", ["context", "env"])
def test_triton_on_cpu_without_interpreter_raises_runtime_error(monkeypatch, how):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, v, ii, oi = _layer_args()
    layer = sk.SAOLinear(24, 8, groups=2, dtype=torch.float64)
    calls = [
        lambda: OPS.linear(x, v, ii, oi, None, 1),
        lambda: OPS.linear_grad_input(torch.randn(3, 8, dtype=torch.float64), v, ii, oi, 1),
        lambda: OPS.linear_grad_values(torch.randn(3, 8, dtype=torch.float64), x, ii, oi, 2, 1),
        lambda: layer(x),
    ]
    for call in calls:
        if how == "env":
            monkeypatch.setenv(ENV_VAR, "triton")
            with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
                call()
        else:
            with sk.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
                call()


def test_native_on_cuda_or_without_extension_raises():
    with sk.backend("native"):
        with pytest.raises(RuntimeError, match="CPU tensors" if NATIVE else "native CPU kernels are unavailable"):
            select(torch.device("cuda"), torch.float32)


def test_public_name_is_the_context_manager_and_does_not_hide_a_module():
    import sys

    assert sk.backend is sys.modules["sao_kernels.dispatch"].backend
    assert "sao_kernels.backend" not in sys.modules
    assert set(BACKENDS) == {"auto", "torch", "triton", "dense", "native"}


# ------------------------------------------------------ the backend that runs, observed
def _spy_torch_paths(monkeypatch):
    """Count calls of the structured torch composites (the 'torch' backend's code path)."""
    calls = []
    for mod_name, fn_name in (
        ("sao_kernels.ops.linear", "linear_torch"),
        ("sao_kernels.ops.linear_grad_input", "linear_grad_input_torch"),
        ("sao_kernels.ops.linear_grad_values", "linear_grad_values_torch"),
    ):
        mod = importlib.import_module(mod_name)
        orig = getattr(mod, fn_name)

        def spy(*args, _orig=orig, _name=fn_name, **kwargs):
            calls.append(_name)
            return _orig(*args, **kwargs)

        monkeypatch.setattr(mod, fn_name, spy)
    return calls


def _run_all(x, v, ii, oi):
    xr, vr = x.clone().requires_grad_(True), v.clone().requires_grad_(True)
    y = OPS.linear(xr, vr, ii, oi, None, 1)
    y.backward(torch.ones_like(y))
    return y


@pytest.mark.parametrize("how", ["env", "context"])
@pytest.mark.parametrize("backend_name", ["torch", "dense"])
def test_backend_selection_runs_that_backend(monkeypatch, backend_name, how):
    calls = _spy_torch_paths(monkeypatch)
    x, v, ii, oi = _layer_args()
    if how == "env":
        monkeypatch.setenv(ENV_VAR, backend_name)
        y = _run_all(x, v, ii, oi)
    else:
        monkeypatch.setenv(ENV_VAR, "dense" if backend_name == "torch" else "torch")  # the context wins
        with sk.backend(backend_name):
            y = _run_all(x, v, ii, oi)
    W = torch.zeros(8, 24, dtype=torch.float64)
    W[torch.arange(8).view(2, 4, 1), ii.view(2, 1, 12)] = v
    torch.testing.assert_close(y, x @ W.T)
    if backend_name == "torch":
        assert set(calls) == {"linear_torch", "linear_grad_input_torch", "linear_grad_values_torch"}
    else:
        assert calls == [], f"dense backend ran the structured path: {calls}"


def test_auto_on_cpu_runs_native_not_python(monkeypatch):
    calls = _spy_torch_paths(monkeypatch)
    x, v, ii, oi = _layer_args()
    _run_all(x, v, ii, oi)
    assert calls == ([] if NATIVE else ["linear_torch", "linear_grad_input_torch", "linear_grad_values_torch"])
    # float16 too: every floating dtype is native on CPU
    _run_all(x.half(), v.half(), ii, oi)
    assert len(calls) == (0 if NATIVE else 6)


if NATIVE:  # (the C++ CPU kernels' policy exists only with the native extension)

    @pytest.mark.parametrize("request_name", ["auto", "native", "torch", "dense", "triton"])
    def test_cpp_cpu_policy_agrees_with_python(monkeypatch, request_name):
        """csrc/ops.cpp applies the "cpu" row of dispatch.AUTO itself: for every dtype and request it
        runs the native kernels exactly when select() says "native"."""
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        for how in ("context", "env"):
            for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
                for T, flops in ((1, 2e3), (16, 4e6), (17, 3.9e6), (512, 4e6), (512, 1e9), (512, 9.9e8), (-1, -1.0)):

                    def both(dtype=dtype, T=T, flops=flops):
                        py = select(CPU, dtype, tokens=T, flops=flops) == "native"
                        return py, bool(OPS._native_runs(dtype, T, flops))

                    if how == "env":
                        monkeypatch.setenv(ENV_VAR, request_name)
                        expected, got = both()
                        monkeypatch.delenv(ENV_VAR)
                    else:
                        with sk.backend(request_name):
                            expected, got = both()
                    assert got == expected, (how, request_name, dtype, T, flops)

    @pytest.fixture
    def _policy(monkeypatch):
        """Replace CPU_POLICY for a test; the C++ copy is synced and restored."""

        def set_rows(rows):
            monkeypatch.setattr(dispatch, "CPU_POLICY", rows)
            dispatch.sync_native_policy()

        yield set_rows
        monkeypatch.undo()
        dispatch.sync_native_policy()

    def test_a_policy_row_moves_a_dtype_and_shape_class_to_the_composite_in_cpp_too(monkeypatch, _policy):
        """A row sending bfloat16 training shapes on this tier to the composite: the C++ CPU kernels
        (which receive the table) run the composite there, and native for decode shapes."""
        tier = sk.cpu_tier()
        _policy((((tier,), (torch.bfloat16,), ("train", "large"), "torch"), (None, NATIVE_DTYPES, None, "native")))
        assert select(CPU, torch.bfloat16, tokens=512, flops=1e10) == "torch"
        assert select(CPU, torch.bfloat16, tokens=4, flops=1e10) == "native"
        assert select(CPU, torch.float32, tokens=512, flops=1e10) == "native"
        assert not OPS._native_runs(torch.bfloat16, 512, 1e10) and OPS._native_runs(torch.bfloat16, 4, 1e10)
        calls = _spy_torch_paths(monkeypatch)
        g = torch.Generator().manual_seed(0)
        v = torch.randn(2, 256, 256, generator=g).bfloat16()
        for T, expected in ((512, ["linear_torch", "linear_grad_input_torch", "linear_grad_values_torch"]), (8, [])):
            calls.clear()
            _run_all(torch.randn(T, 512, generator=g).bfloat16(), v, torch.randperm(512, generator=g), None)
            assert calls == expected, T
        _policy(((("no-such-tier",), (torch.bfloat16,), None, "torch"),))  # another tier's row: no effect here
        assert select(CPU, torch.bfloat16, tokens=512, flops=1e10) == ("native" if NATIVE else "torch")
        assert OPS._native_runs(torch.bfloat16, 512, 1e10)

    def test_set_cpu_policy_refuses_unknown_cells():
        with pytest.raises(ValueError, match="unknown cell 'Float:huge'"):
            OPS._set_cpu_policy(["Float:huge"], 16, 4e6, 1e9)


if NATIVE:

    @pytest.mark.parametrize("name", ["bogus", "Native", " torch", "cublas"])
    def test_set_thread_backend_rejects_unknown_names_at_the_call(name):
        """It used to accept any string; the next forward then failed far from the cause."""
        allowed = r"is not a backend; allowed: 'auto', 'torch', 'triton', 'dense', 'native'"
        with pytest.raises(ValueError, match=allowed):
            OPS._set_thread_backend(name)
        x, v, ii, oi = _layer_args()
        OPS.linear(x, v, ii, oi, None, 1)  # the thread's request is unchanged
        for ok in BACKENDS + ("",):
            OPS._set_thread_backend(ok)
        OPS._set_thread_backend("")


TRITON_INTERPRET_LATE = """
import os, torch, sao_kernels as sk
os.environ["TRITON_INTERPRET"] = "1"
layer = sk.SAOLinear(16, 16, sparsity=0.75)
try:
    with sk.backend("triton"):
        layer(torch.randn(2, 16))
except RuntimeError as err:
    print("RAISED", err)
"""


if importlib.util.find_spec("triton") is not None:  # (without triton the backend is refused first)

    def test_triton_interpret_set_after_import_says_to_set_it_before():
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        proc = subprocess.run(
            [sys.executable, "-c", TRITON_INTERPRET_LATE], capture_output=True, text=True, timeout=300, env=env
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "RAISED TRITON_INTERPRET changed after sao_kernels was imported" in proc.stdout, proc.stderr
        assert "set it before importing sao_kernels (and triton)" in proc.stdout
