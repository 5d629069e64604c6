// The schemas of torch.ops.sao_kernels.{linear, linear_grad_input, linear_grad_values}, and of
// each op's private twin _<op>_python (same schema; its only kernel is the op's Python
// implementation, which sao_kernels/ops/_library.py registers for the CPU kernel to fall back
// on).  They are defined here, in the ops library (sao_kernels/lib/libsao_kernels_ops.so), so
// that a process that loads only this library -- a C++ program, or Python running an
// AOTInductor package without importing sao_kernels -- knows the ops.  sao_kernels/ops/
// _library.py holds the same strings for builds without the extension (a test compares them).
//
// Each op's fake (meta) kernel is registered in Python, in the module named by
// set_python_module: torch checks the registration comes from there, and points a process
// that traces the op without it to that module.
#include <torch/library.h>

#define SAO_LINEAR_ARGS \
  "(Tensor x, Tensor values, Tensor? in_index, Tensor? out_index, Tensor? bias, int block_size=1) -> Tensor"
#define SAO_GRAD_INPUT_ARGS \
  "(Tensor grad_out, Tensor values, Tensor? in_index, Tensor? out_index, int block_size=1) -> Tensor"
#define SAO_GRAD_VALUES_ARGS \
  "(Tensor grad_out, Tensor x, Tensor? in_index, Tensor? out_index, int groups, int block_size=1) -> Tensor"

TORCH_LIBRARY(sao_kernels, m) {
  m.set_python_module("sao_kernels.ops.linear");
  m.def("linear" SAO_LINEAR_ARGS);
  m.def("_linear_python" SAO_LINEAR_ARGS);
}

TORCH_LIBRARY_FRAGMENT(sao_kernels, m) {
  m.set_python_module("sao_kernels.ops.linear_grad_input");
  m.def("linear_grad_input" SAO_GRAD_INPUT_ARGS);
  m.def("_linear_grad_input_python" SAO_GRAD_INPUT_ARGS);
}

TORCH_LIBRARY_FRAGMENT(sao_kernels, m) {
  m.set_python_module("sao_kernels.ops.linear_grad_values");
  m.def("linear_grad_values" SAO_GRAD_VALUES_ARGS);
  m.def("_linear_grad_values_python" SAO_GRAD_VALUES_ARGS);
}

// linear followed by an elementwise activation, with one autograd node (csrc/linear_act.cpp;
// its torch composite, used on other devices and without the extension: sao_kernels/ops/
// linear_act.py).
TORCH_LIBRARY_FRAGMENT(sao_kernels, m) {
  m.def(
      "linear_act(Tensor x, Tensor values, Tensor? in_index, Tensor? out_index, Tensor? bias, int block_size=1, "
      "str activation=\"tanh\") -> Tensor");
}
