// The Python module sao_kernels._C: the fast entry point of the forward op, and what makes
// `import sao_kernels._C` register the ops (it links the ops library
// sao_kernels/lib/libsao_kernels_ops.so: schemas.cpp, ops.cpp, native_kernels.cpp, which need
// no Python and are what C++ programs load).
//
// ``sao_kernels._C.linear(x, values, in_index, out_index, bias, block_size)``: the forward op
// called from Python without torch.ops' Python layer (argument parsing against the schema
// costs several microseconds per call, as much as a width-128 layer's whole product).  It is
// the same dispatcher call as torch.ops.sao_kernels.linear (autograd, modes, vmap, every
// backend); sao_kernels.functional uses it for plain tensors outside tracing and compiling.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <string>

namespace {

at::Tensor call_linear(const at::Tensor& x, const at::Tensor& v, const std::optional<at::Tensor>& ii,
                       const std::optional<at::Tensor>& oi, const std::optional<at::Tensor>& b, int64_t bs) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("sao_kernels::linear", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t)>();
  return op.call(x, v, ii, oi, b, bs);
}


bool parse_optional_tensor(PyObject* obj, const char* name, std::optional<at::Tensor>& out) {
  if (obj == Py_None) {
    out = std::nullopt;
    return true;
  }
  if (!THPVariable_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "linear: %s must be a tensor or None, got %s", name, Py_TYPE(obj)->tp_name);
    return false;
  }
  out = THPVariable_Unpack(obj);
  return true;
}

struct Args {
  std::optional<at::Tensor> ii, oi, b;
  int64_t block_size = 1;
};

// The first six arguments of linear / linear_act (x, values, in_index, out_index, bias,
// block_size); false with a Python error set when one is of the wrong type.
bool parse_args(PyObject* const* args, Args& a) {
  for (int i = 0; i < 2; ++i) {
    if (!THPVariable_Check(args[i])) {
      PyErr_Format(PyExc_TypeError, "linear: %s must be a tensor, got %s", i == 0 ? "x" : "values",
                   Py_TYPE(args[i])->tp_name);
      return false;
    }
  }
  if (!parse_optional_tensor(args[2], "in_index", a.ii) || !parse_optional_tensor(args[3], "out_index", a.oi) ||
      !parse_optional_tensor(args[4], "bias", a.b))
    return false;
  if (!PyLong_Check(args[5]) || PyBool_Check(args[5])) {
    PyErr_Format(PyExc_ValueError, "linear: block_size must be a positive int, got %s", Py_TYPE(args[5])->tp_name);
    return false;
  }
  a.block_size = PyLong_AsLongLong(args[5]);
  return !(a.block_size == -1 && PyErr_Occurred());
}

// Cases sao_kernels.functional handles in Python (a non-strided input, torch.jit.trace):
// NotImplemented sends it there, at no cost to the common case.
bool python_handles(const at::Tensor& x) {
  return x.layout() != c10::kStrided || x.is_nested() || torch::jit::tracer::isTracing();
}

PyObject* py_linear(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 6) {
    PyErr_Format(PyExc_TypeError, "linear() takes 6 arguments (x, values, in_index, out_index, bias, block_size), got %zd",
                 nargs);
    return nullptr;
  }
  Args a;
  if (!parse_args(args, a)) return nullptr;
  const at::Tensor& x = THPVariable_Unpack(args[0]);
  const at::Tensor& values = THPVariable_Unpack(args[1]);
  if (python_handles(x)) Py_RETURN_NOTIMPLEMENTED;
  at::Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
    y = call_linear(x, values, a.ii, a.oi, a.b, a.block_size);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

// ``sao_kernels._C.linear_act(x, values, in_index, out_index, bias, block_size, activation)``:
// torch.ops.sao_kernels.linear_act, the same way (what sk.fuse_chains' layers call).
PyObject* py_linear_act(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7 || !PyUnicode_Check(args[6])) {
    PyErr_Format(PyExc_TypeError,
                 "linear_act() takes 7 arguments (x, values, in_index, out_index, bias, block_size, activation: "
                 "str), got %zd",
                 nargs);
    return nullptr;
  }
  Args a;
  if (!parse_args(args, a)) return nullptr;
  Py_ssize_t len = 0;
  const char* act = PyUnicode_AsUTF8AndSize(args[6], &len);
  if (!act) return nullptr;
  const std::string activation(act, len);
  const at::Tensor& x = THPVariable_Unpack(args[0]);
  const at::Tensor& values = THPVariable_Unpack(args[1]);
  if (python_handles(x)) Py_RETURN_NOTIMPLEMENTED;
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("sao_kernels::linear_act", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t,
                            c10::string_view)>();
  at::Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
    y = op.call(x, values, a.ii, a.oi, a.b, a.block_size, activation);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"linear", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_linear)), METH_FASTCALL,
     "linear(x, values, in_index, out_index, bias, block_size) -> Tensor: torch.ops.sao_kernels.linear, "
     "called without torch.ops' Python layer."},
    {"linear_act", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_linear_act)), METH_FASTCALL,
     "linear_act(x, values, in_index, out_index, bias, block_size, activation) -> Tensor: "
     "torch.ops.sao_kernels.linear_act, called without torch.ops' Python layer."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

// ``import sao_kernels._C`` loads this library and the ops library it links (whose static
// initialisers register the schemas and kernels), and returns the module holding the fast
// entry point.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
