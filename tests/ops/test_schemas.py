"""The op schemas are written twice: in C++ (csrc/schemas.cpp, the ops library) and in
``sao_kernels.ops._library.SCHEMAS`` (builds without the extension).  They must agree, and the
ops registered in this process (by whichever side defined them) have exactly those schemas."""

from __future__ import annotations

import pathlib
import re

import torch

from sao_kernels.ops import _library

SOURCE = (pathlib.Path(__file__).resolve().parents[2] / "csrc" / "schemas.cpp").read_text(encoding="utf-8")
MACRO_OF = {
    "linear": "SAO_LINEAR_ARGS",
    "linear_grad_input": "SAO_GRAD_INPUT_ARGS",
    "linear_grad_values": "SAO_GRAD_VALUES_ARGS",
}


def cpp_macros() -> dict:
    """``#define NAME "..." "..."`` (string literals possibly split over lines) -> the string."""
    out = {}
    for name, body in re.findall(r"#define (\w+)\s*\\?\s*((?:\"[^\"]*\"\s*)+)", SOURCE):
        out[name] = "".join(re.findall(r"\"([^\"]*)\"", body))
    return out


def test_cpp_and_python_schemas_agree():
    macros = cpp_macros()
    assert set(_library.SCHEMAS) == set(MACRO_OF)
    for name, args in _library.SCHEMAS.items():
        assert macros[MACRO_OF[name]] == args, name
        # each op and its Python twin are defined with that argument list
        assert f'm.def("{name}" {MACRO_OF[name]});' in SOURCE, name
        assert f'm.def("_{name}_python" {MACRO_OF[name]});' in SOURCE, name


def test_registered_schemas_are_these():
    for name, args in _library.SCHEMAS.items():
        for op in (name, f"_{name}_python"):
            schema = getattr(torch.ops.sao_kernels, op).default._schema
            assert str(schema) == f"sao_kernels::{op}{args}", (str(schema), args)


def test_fake_kernels_come_from_the_modules_the_cpp_schemas_name():
    """csrc/schemas.cpp names the Python module of each op's fake kernel (set_python_module);
    torch checks it when that kernel first runs (here under FakeTensorMode)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for name in _library.SCHEMAS:
        assert f'm.set_python_module("sao_kernels.ops.{name}");' in SOURCE, name
    with FakeTensorMode():
        x, v, dy = torch.empty(5, 8), torch.empty(2, 3, 4), torch.empty(5, 6)
        assert torch.ops.sao_kernels.linear(x, v, None, None, None).shape == (5, 6)
        assert torch.ops.sao_kernels.linear_grad_input(dy, v, None, None).shape == (5, 8)
        assert torch.ops.sao_kernels.linear_grad_values(dy, x, None, None, 2).shape == (2, 3, 4)
