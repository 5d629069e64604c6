// Pieces the C++ autograd nodes of the ops share (csrc/ops.cpp: the three products;
// csrc/linear_act.cpp: the fused linear + activation).
#pragma once

#include <ATen/ATen.h>
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

}  // namespace sao
