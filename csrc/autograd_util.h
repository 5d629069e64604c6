// Pieces the C++ autograd nodes of the ops share (csrc/ops.cpp: the three products;
// csrc/linear_act.cpp: the fused linear + activation): the saved index, the node factory and
// the calls of the public ops through the dispatcher.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <c10/util/string_view.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <memory>
#include <optional>
#include <type_traits>

namespace sao {

// An index map to save for backward.  Inference tensors cannot be saved (nor version-checked):
// those are copied (O(n), never differentiated).
inline at::Tensor saved_index(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->is_inference() ? t->clone() : *t;
}

// A tensor a node's fused loop may read through data_ptr: a strided CPU tensor that no tracing or
// functorch wrapper stands behind (FakeTensor, functional tensors, torch.func wrappers carry
// keys beyond the backend's; those take the ATen formulas, which they trace), while no Python
// dispatch mode (a FLOP counter, a logger) expects to see the ops.
inline bool plain_cpu(const at::Tensor& t) {
  if (c10::impl::dispatch_mode_enabled()) return false;
  if (!t.defined() || !t.device().is_cpu() || t.layout() != at::kStrided || !t.has_storage()) return false;
  const auto ks = t.key_set();
  return !ks.has(c10::DispatchKey::Python) && !ks.has(c10::DispatchKey::Functionalize) &&
         !ks.has(c10::DispatchKey::FuncTorchBatched) && !ks.has(c10::DispatchKey::FuncTorchGradWrapper) &&
         !ks.has(c10::DispatchKey::Conjugate) && !ks.has(c10::DispatchKey::Negative);
}

// Nodes are c10::intrusive_ptr-owned from torch 2.12/2.13 on, std::shared_ptr-owned before
// (torch 2.11, the GPU machine): make one either way.  (The shared_ptr branch is only
// instantiated on old torch; deleteNode, found by argument-dependent lookup, frees deep
// graphs iteratively.)
template <typename T, bool intrusive = std::is_base_of_v<c10::intrusive_ptr_target, torch::autograd::Node>>
struct NodeFactory;
template <typename T>
struct NodeFactory<T, true> {
  static auto make() { return c10::make_intrusive<T>(); }
};
template <typename T>
struct NodeFactory<T, false> {
  static auto make() {
    return std::shared_ptr<T>(new T(), [](T* node) { deleteNode(node); });
  }
};

// The public ops through the dispatcher: the autograd kernels' calls, which go on to autograd
// when a derivative is differentiated (create_graph).
using LinearSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                             const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t);
using LinearActSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t,
                                c10::string_view);
using GradInputSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&, int64_t);
using GradValuesSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                 const std::optional<at::Tensor>&, int64_t, int64_t);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline at::Tensor linear(const at::Tensor& x, const at::Tensor& v, const std::optional<at::Tensor>& ii,
                         const std::optional<at::Tensor>& oi, const std::optional<at::Tensor>& b, int64_t bs) {
  static const auto op = find_op<LinearSig>("sao_kernels::linear");
  return op.call(x, v, ii, oi, b, bs);
}
inline at::Tensor linear_grad_input(const at::Tensor& dy, const at::Tensor& v, const std::optional<at::Tensor>& ii,
                                    const std::optional<at::Tensor>& oi, int64_t bs) {
  static const auto op = find_op<GradInputSig>("sao_kernels::linear_grad_input");
  return op.call(dy, v, ii, oi, bs);
}
inline at::Tensor linear_grad_values(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& ii,
                                     const std::optional<at::Tensor>& oi, int64_t groups, int64_t bs) {
  static const auto op = find_op<GradValuesSig>("sao_kernels::linear_grad_values");
  return op.call(dy, x, ii, oi, groups, bs);
}

}  // namespace sao
