"""CPU tiers (sao_kernels/cpu.py, csrc/cpu_tier.cpp): detection, the SAO_KERNELS_CPU_ISA cap,
its error at import, the variables that emulate a tier, and that a cap changes the code path
of the native kernels but not their results."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import sao_kernels as sk
from sao_kernels import _extension, cpu

ROOT = pathlib.Path(__file__).resolve().parents[2]
NATIVE = _extension.available()


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in (cpu.ENV_VAR, *cpu.LIBRARY_ENV_VARS)}
    full.update(env, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)


def test_tiers_are_ordered_and_the_tier_is_one_of_them():
    assert cpu.TIERS == ("scalar", "avx2", "avx512", "avx512_bf16", "amx")
    assert sk.cpu_tier() in cpu.TIERS and cpu.hardware_tier() in cpu.TIERS
    assert cpu.TIERS.index(sk.cpu_tier()) <= cpu.TIERS.index(cpu.hardware_tier())
    assert cpu.emulable_tiers() == cpu.TIERS[1 : cpu.TIERS.index(cpu.hardware_tier()) + 1]


def test_hardware_tier_agrees_with_cpuinfo_flags():
    """The extension's detection (cpuid, oneDNN for AMX) and /proc/cpuinfo's flags agree."""
    flags = cpu._cpu_flags()
    hw = cpu.hardware_tier()
    if not flags:  # no /proc/cpuinfo (not Linux): nothing to compare with
        assert hw in cpu.TIERS
        return
    assert ("avx2" in flags) == (cpu.TIERS.index(hw) >= 1) or "fma" not in flags
    assert ("avx512_bf16" in flags and "avx512vl" in flags) == (cpu.TIERS.index(hw) >= 3) or "amx_bf16" in flags


def test_cpu_info_names_model_tier_and_library_caps(monkeypatch):
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # recorded as set (it acts only before torch loads)
    info = sk.cpu_info()
    assert info["model"] == cpu.cpu_model() and info["model"]
    assert info["tier"] == sk.cpu_tier() and info["hardware_tier"] == cpu.hardware_tier()
    assert info["aten_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["dnnl_max_cpu_isa"] == "AVX2"
    assert set(info) >= {"cap", "aten_cpu_capability", "mkl_enable_instructions"}


@pytest.mark.parametrize("tier", cpu.TIERS)
def test_tier_env_sets_all_caps_consistently(tier):
    env = cpu.tier_env(tier)
    assert env[cpu.ENV_VAR] == tier and set(env) == {cpu.ENV_VAR, *cpu.LIBRARY_ENV_VARS}
    assert env["ATEN_CPU_CAPABILITY"] == {"scalar": "default", "avx2": "avx2"}.get(tier, "avx512")
    assert env["DNNL_MAX_CPU_ISA"].startswith({"scalar": "SSE", "avx2": "AVX2"}.get(tier, "AVX512_CORE"))


@pytest.mark.parametrize("bad", ["sse", "AVX-2", "avx512bf16", 3, None])
def test_bad_tier_names_raise_listing_the_allowed(bad):
    with pytest.raises(ValueError) as err:
        cpu.tier_env(bad)
    for name in cpu.TIERS:
        assert repr(name) in str(err.value)


def test_cap_parsing_is_case_and_space_insensitive(monkeypatch):
    monkeypatch.setenv(cpu.ENV_VAR, "  AVX2 ")
    assert cpu.cap() == "avx2"
    monkeypatch.setenv(cpu.ENV_VAR, "")
    assert cpu.cap() is None


def test_bad_env_value_fails_at_import_naming_variable_and_allowed():
    proc = _python("import sao_kernels", SAO_KERNELS_CPU_ISA="avx3")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError") and "SAO_KERNELS_CPU_ISA='avx3'" in last
    for name in cpu.TIERS:
        assert repr(name) in last


if NATIVE:

    def test_cpp_refuses_a_bad_cap_too():
        """The extension alone (loaded without the package's import check) raises the same error."""
        lib = glob.glob(str(ROOT / "sao_kernels" / "_C*.so"))[0]
        code = f"import torch; torch.ops.load_library({lib!r}); torch.ops.sao_kernels._cpu_tier()"
        proc = _python(code, SAO_KERNELS_CPU_ISA="avx3")
        assert proc.returncode != 0 and "SAO_KERNELS_CPU_ISA='avx3' is not a CPU tier" in proc.stderr
        assert "'avx512_bf16'" in proc.stderr

    _PROBE = """
import json, torch, sao_kernels as sk
g = torch.Generator().manual_seed(0)
out = {"tier": sk.cpu_tier(), "build": torch.ops.sao_kernels._native_build_info()}
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for T, f, G in ((37, 96, 4), (300, 256, 2)):
        layer = sk.SAOLinear(f, f, groups=G, generator=g, dtype=dtype)
        x = torch.randn(T, f, generator=g).to(dtype).requires_grad_(True)
        y = layer(x)
        y.backward(torch.randn(y.shape, generator=g).to(dtype))
        key = f"{dtype} {T} {f} {G}"
        out[key] = [t.float().flatten().tolist() for t in (y, x.grad, layer.values.grad)]
print(json.dumps(out))
"""

    def test_cap_changes_the_code_path_not_the_results():
        """Under every cap below this CPU's tier (scalar included) the native kernels take their
        other conversion / transpose paths and give the same bits: the vector paths round as
        c10's scalar conversions do.  (Only SAO_KERNELS_CPU_ISA is set: oneDNN's GEMMs, which may
        differ by ISA, stay the same.)  The one exception is the bfloat16 / float16 engine,
        which the tier chooses (oneDNN bmm from avx512_bf16, brgemm below: csrc/lowp_bmm.cpp):
        the same bits among tiers with the same engine, and the same values to the dtype's
        rounding across engines."""
        runs = {}
        for tier in ("scalar", *cpu.emulable_tiers()):
            proc = _python(_PROBE, SAO_KERNELS_CPU_ISA=tier)
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[tier] = json.loads(proc.stdout.strip().splitlines()[-1])
            assert runs[tier]["tier"] == tier
            assert f"CPU tier: {tier}" in runs[tier]["build"]
        assert "transposes: scalar" in runs["scalar"]["build"] and "transposes: AVX2" in runs["avx2"]["build"]

        def engine(run, dtype):  # the build info names each low-precision dtype's engine
            return run["build"].split(f"; {dtype}: ", 1)[1].split(";", 1)[0]

        top = runs[cpu.emulable_tiers()[-1]]
        for tier, run in runs.items():
            for key in top:
                if key in ("tier", "build"):
                    continue
                dtype = key.split()[0].replace("torch.", "")
                if dtype == "float32" or engine(run, dtype) == engine(top, dtype):
                    assert run[key] == top[key], (tier, key)
                else:
                    for got, want in zip(run[key], top[key]):
                        torch.testing.assert_close(
                            torch.tensor(got), torch.tensor(want), rtol=0.05, atol=0.05, msg=str((tier, key))
                        )

    def test_native_tier_under_every_emulated_cap():
        """With all four caps (tier_env) the extension reports that tier and ATen follows."""
        for tier in cpu.emulable_tiers():
            code = "import json, sao_kernels as sk; print(json.dumps(sk.cpu_info()))"
            proc = _python(code, **cpu.tier_env(tier))
            assert proc.returncode == 0, proc.stderr[-3000:]
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            assert info["tier"] == tier and info["cap"] == tier
            assert info["aten_capability"] == ("AVX2" if tier == "avx2" else "AVX512")
