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

PyObject* py_linear(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 6) {
    PyErr_Format(PyExc_TypeError, "linear() takes 6 arguments (x, values, in_index, out_index, bias, block_size), got %zd",
                 nargs);
    return nullptr;
  }
  for (int i = 0; i < 2; ++i) {
    if (!THPVariable_Check(args[i])) {
      PyErr_Format(PyExc_TypeError, "linear: %s must be a tensor, got %s", i == 0 ? "x" : "values",
                   Py_TYPE(args[i])->tp_name);
      return nullptr;
    }
  }
  std::optional<at::Tensor> ii, oi, b;
  if (!parse_optional_tensor(args[2], "in_index", ii) || !parse_optional_tensor(args[3], "out_index", oi) ||
      !parse_optional_tensor(args[4], "bias", b))
    return nullptr;
  if (!PyLong_Check(args[5]) || PyBool_Check(args[5])) {
    PyErr_Format(PyExc_ValueError, "linear: block_size must be a positive int, got %s", Py_TYPE(args[5])->tp_name);
    return nullptr;
  }
  const int64_t block_size = PyLong_AsLongLong(args[5]);
  if (block_size == -1 && PyErr_Occurred()) return nullptr;
  const at::Tensor& x = THPVariable_Unpack(args[0]);
  const at::Tensor& values = THPVariable_Unpack(args[1]);
  // Cases sao_kernels.functional handles in Python (a non-strided input, torch.jit.trace):
  // NotImplemented sends it there, at no cost to the common case.
  if (x.layout() != c10::kStrided || x.is_nested() || torch::jit::tracer::isTracing()) Py_RETURN_NOTIMPLEMENTED;
  at::Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
    y = call_linear(x, values, ii, oi, b, block_size);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"linear", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_linear)), METH_FASTCALL,
     "linear(x, values, in_index, out_index, bias, block_size) -> Tensor: torch.ops.sao_kernels.linear, "
     "called without torch.ops' Python layer."},
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
