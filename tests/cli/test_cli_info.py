"""``python -m sao_kernels info``: what the installation runs with, checked against the package
itself, run in subprocesses (the extension, the backend and the interpreter are per process)."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import sao_kernels as sk
from sao_kernels import _extension, cli, dispatch
from sao_kernels.cli import info


def _info(*args, **env):
    """(exit status, stdout, stderr) of ``python -m sao_kernels info ARGS`` with ``env`` added."""
    proc = subprocess.run(
        [sys.executable, "-m", "sao_kernels", "info", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_json_matches_this_process():
    code, out, err = _info("--json")
    assert code == 0, err
    info = json.loads(out)  # stdout is exactly one JSON object
    assert info["sao_kernels"]["version"] == sk.__version__
    assert info["sao_kernels"]["path"] == os.path.dirname(sk.__file__)
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda_available"] == torch.cuda.is_available()
    assert info["native_extension"]["loaded"] == _extension.available()
    assert info["native_extension"]["reason"] == _extension.unavailable_reason()
    cpu = sk.cpu_info()
    assert {k: info["cpu"][k] for k in ("model", "tier", "hardware_tier", "cap")} == {
        k: cpu[k] for k in ("model", "tier", "hardware_tier", "cap")
    }
    assert info["backends"]["requested"] == dispatch.requested_backend()
    usable = [b for b in dispatch.BACKENDS if b != "auto" and dispatch.usable(b, torch.device("cpu"))]
    assert info["backends"]["cpu"]["usable"] == usable
    assert info["backends"]["cpu"]["picks"]["float32"] == dispatch.select(torch.device("cpu"), torch.float32)
    assert ("cuda" in info["backends"]) == torch.cuda.is_available()
    assert info["triton"]["interpret"] == dispatch.triton_interpreting()
    assert (info["triton"]["version"] is not None) == dispatch.triton_available()


def test_without_the_extension_says_why_and_what_runs():
    code, out, err = _info("--json", SAO_KERNELS_NO_EXT="1", TRITON_INTERPRET="0")
    assert code == 0, err
    info = json.loads(out)
    assert info["native_extension"] == {**info["native_extension"], "loaded": False, "reason": "SAO_KERNELS_NO_EXT=1"}
    assert "native" not in info["backends"]["cpu"]["usable"]
    assert set(info["backends"]["cpu"]["picks"].values()) == {"torch"}
    assert info["triton"]["interpret"] is False and "triton" not in info["backends"]["cpu"]["usable"]
    assert info["environment"]["SAO_KERNELS_NO_EXT"] == "1"


def test_text_report_and_a_bad_environment_do_not_crash():
    code, out, err = _info(SAO_KERNELS_BACKEND="bogus", TRITON_INTERPRET="1", SAO_KERNELS_NO_EXT="1")
    assert code == 0, err
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines() if not line.startswith(" "))
    assert lines["sao_kernels"].startswith(sk.__version__)
    assert lines["torch"].startswith(torch.__version__)
    assert lines["native"].startswith("NOT loaded: SAO_KERNELS_NO_EXT=1") and "--no-build-isolation" in lines["native"]
    assert lines["cpu"] == sk.cpu_info()["model"]
    assert lines["cpu tier"].startswith(f"{sk.cpu_tier()} (hardware {sk.cpu_info()['hardware_tier']}")
    assert "SAO_KERNELS_BACKEND='bogus' is not a backend" in lines["backend"]
    assert "TRITON_INTERPRET on" in lines["triton"]
    assert "SAO_KERNELS_BACKEND=bogus" in lines["environment"]


def test_help_and_usage_error(capsys):
    for argv, status in ((["info", "--help"], 0), (["info", "--bogus"], 2)):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv, prog="sao-kernels")
        assert exc.value.code == status
    out, err = capsys.readouterr()
    assert out.startswith("usage: sao-kernels info") and "--json" in out
    assert "unrecognized arguments: --bogus" in err


def test_in_process_text_is_the_json_report(capsys):
    assert cli.main(["info"], prog="sao-kernels") == 0
    text = capsys.readouterr().out
    assert text == info.format_text(info.collect()) + "\n"
    assert cli.main(["info", "--json"], prog="sao-kernels") == 0
    assert json.loads(capsys.readouterr().out)["sao_kernels"]["version"] == sk.__version__


def test_a_cuda_machine_gets_its_own_row(monkeypatch):
    """The CUDA branch without a GPU here: torch's answers are faked, the policy is real."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")
    report = info.collect()
    cuda = report["backends"]["cuda"]
    assert report["torch"]["gpus"] == ["Fake GPU"] and "native" not in cuda["usable"]
    assert ("triton" in cuda["usable"]) == dispatch.triton_available()
    assert cuda["picks"]["float64"] == "torch"  # no tensor-core path for float64 (dispatch.AUTO)
    assert cuda["picks"]["float32"] == dispatch.select(torch.device("cuda"), torch.float32)
    text = info.format_text(report)
    assert "Fake GPU" in text and "\n  cuda " in text
