// The C++ side of torch.ops.sao_kernels.{linear, linear_grad_input, linear_grad_values}.
//
// The schemas are defined in schemas.cpp (sao_kernels/ops/_library.py has the table of which
// kernel serves which dispatch key).  This file registers:
//
//  * CPU kernels: argument checks (the same checks and messages as
//    sao_kernels/ops/_validate.py, in one O(n) pass per index) and the native kernels of
//    native_kernels.cpp, when the thread's requested backend is "native", or "auto" and the
//    dtype is one the native kernels run (the "cpu" row of sao_kernels.dispatch.AUTO).  Every
//    other case (backend "torch" / "dense" / "triton" forced, other dtypes, an unknown
//    backend name) goes to the op's Python implementation through its private twin
//    sao_kernels::_<op>_python, which decides and raises as sao_kernels.dispatch says (in a
//    process that has not imported sao_kernels that twin has no kernel: a clear error).
//  * Autograd kernels for every device: reverse mode through an autograd Node per op (its
//    backward calls the other ops, so double backward and beyond work), and forward mode
//    (jvp), like the kernels torch generates for its own ops, so torch.func transforms work.
//
// So the default CPU path never enters Python, and this file needs none: it is part of the
// ops library (sao_kernels/lib/libsao_kernels_ops.so) that C++ programs load.  The Python
// module sao_kernels._C (python_module.cpp) links it.
#include "autograd_util.h"
#include "sao_kernels.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace sao {
namespace {

using at::ScalarType;
using std::optional;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// ----------------------------------------------------------------------------- messages
std::string shape_str(const Tensor& t) {
  std::string s = "(";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + (t.dim() == 1 ? ",)" : ")");
}

std::string dtype_str(ScalarType t) {  // as Python prints a torch.dtype
  switch (t) {
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Bool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// --------------------------------------------------------------------- backend request
// The thread's request, mirrored from Python's sao_kernels.backend() blocks ("" = none: read
// SAO_KERNELS_BACKEND).
thread_local std::string tl_request;

// The names sao_kernels.dispatch.BACKENDS allows ("" resets to SAO_KERNELS_BACKEND): checked
// here, at the call, so that a bad name never reaches a forward.
void set_thread_backend(std::string name) {
  static const char* const allowed[] = {"auto", "torch", "triton", "dense", "native"};
  bool ok = name.empty();
  for (const char* a : allowed) ok |= name == a;
  TORCH_CHECK_VALUE(ok, "_set_thread_backend: name=", name.empty() ? "''" : "'" + name + "'",
                    " is not a backend; allowed: 'auto', 'torch', 'triton', 'dense', 'native' (or '' to reset)");
  tl_request = std::move(name);
}

std::string requested_backend() {
  std::string s = tl_request;
  if (s.empty()) {
    const char* env = std::getenv("SAO_KERNELS_BACKEND");
    s = env ? env : "";
    s.erase(0, s.find_first_not_of(" \t\n\r"));
    s.erase(s.find_last_not_of(" \t\n\r") + 1);
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  }
  return s.empty() ? "auto" : s;
}

bool native_dtype(ScalarType t) {  // sao_kernels.dispatch.NATIVE_DTYPES
  return t == ScalarType::Float || t == ScalarType::BFloat16 || t == ScalarType::Half || t == ScalarType::Double;
}

// The cells of sao_kernels.dispatch.CPU_POLICY (for this process's CPU tier) where "auto" runs
// native, per (dtype, shape class), and the shape-class thresholds: handed over by Python at
// import (dispatch.sync_native_policy), so that the table is written once.  Until then: native
// for every native dtype.
enum ShapeClass { kDecode = 0, kSmall, kTrain, kLarge, kNumClasses };
struct CpuPolicy {
  bool native[4][kNumClasses];  // Float, BFloat16, Half, Double
  int64_t decode_tokens = 16;
  double small_flops = 4e6;
  double large_flops = 1e9;
  CpuPolicy() {
    for (auto& row : native) std::fill(row, row + kNumClasses, true);
  }
};
CpuPolicy g_policy;

int dtype_slot(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return 0;
    case ScalarType::BFloat16: return 1;
    case ScalarType::Half: return 2;
    case ScalarType::Double: return 3;
    default: return -1;
  }
}

void set_cpu_policy(std::vector<std::string> cells, int64_t decode_tokens, double small_flops, double large_flops) {
  CpuPolicy p;
  for (auto& row : p.native) std::fill(row, row + kNumClasses, false);
  static const char* kDtypes[] = {"Float", "BFloat16", "Half", "Double"};
  static const char* kClasses[] = {"decode", "small", "train", "large"};
  for (const auto& cell : cells) {
    bool found = false;
    for (int d = 0; d < 4 && !found; ++d)
      for (int c = 0; c < kNumClasses && !found; ++c)
        if (cell == std::string(kDtypes[d]) + ":" + kClasses[c]) p.native[d][c] = found = true;
    TORCH_CHECK_VALUE(found, "_set_cpu_policy: unknown cell '", cell, "' (dtype:class)");
  }
  p.decode_tokens = decode_tokens;
  p.small_flops = small_flops;
  p.large_flops = large_flops;
  g_policy = p;
}

// sao_kernels.dispatch.shape_class: tokens < 0 = unknown (train).
ShapeClass shape_class(int64_t tokens, double flops) {
  if (tokens < 0) return kTrain;
  if (tokens <= g_policy.decode_tokens) return kDecode;
  if (flops < 0) return kTrain;
  return flops < g_policy.small_flops ? kSmall : (flops >= g_policy.large_flops ? kLarge : kTrain);
}

// Whether the CPU kernel runs the native kernels for tensors of dtype t and a product of
// `tokens` rows and `flops` (see the file header).  A forced "native" always does: its
// argument checks then refuse any dtype the kernels do not run (every floating dtype is one
// they run).
bool runs_native(ScalarType t, int64_t tokens, double flops) {
  const std::string r = requested_backend();
  if (r == "native") return true;
  if (r != "auto" || !native_dtype(t)) return false;
  return g_policy.native[dtype_slot(t)][shape_class(tokens, flops)];
}

bool native_runs(ScalarType t, int64_t tokens, double flops) { return runs_native(t, tokens, flops); }  // for tests

// (tokens, flops) of a product from its operands; (-1, -1) when the shapes are malformed (the
// checks then raise, whichever implementation runs).
std::pair<int64_t, double> product_size(const Tensor& act, const Tensor& values) {
  if (act.dim() != 2 || values.dim() != 3) return {-1, -1.0};
  return {act.size(0), 2.0 * act.size(0) * values.size(0) * values.size(1) * values.size(2)};
}
// The same for grad-values, from dY (T, m), X (T, n) and G.
std::pair<int64_t, double> grad_values_size(const Tensor& grad_out, const Tensor& x, int64_t groups) {
  if (grad_out.dim() != 2 || x.dim() != 2 || groups <= 0) return {-1, -1.0};
  return {x.size(0), 2.0 * x.size(0) * grad_out.size(1) * x.size(1) / groups};
}

// ------------------------------------------------------------------------------ checks
// One O(n) pass per index: range, permutation (counts), identity, aligned runs.
IndexArg check_index(const char* op, const char* name, const optional<Tensor>& index, int64_t size,
                     const at::Device& device, int64_t block_size) {
  if (!index.has_value() || !index->defined()) return {};
  const Tensor& t = *index;
  TORCH_CHECK_VALUE(t.scalar_type() == ScalarType::Long, op, ": ", name, " must be an int64 tensor, got dtype ",
                   dtype_str(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": ", name, " must have shape (", size, ",), got ",
                    shape_str(t));
  TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " is on ", t.device(), " but the inputs are on ", device,
                    "; all must share a device");
  if (size == 0) return {};
  Tensor c = t.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  thread_local std::vector<int32_t> counts;
  counts.assign(size, 0);
  bool identity = true;
  for (int64_t i = 0; i < size; ++i) {
    const int64_t v = p[i];
    TORCH_CHECK_INDEX(v >= 0 && v < size, op, ": ", name, " has entries outside [0, ", size, "): ", name, "[", i,
                      "] = ", v, " (it must be a permutation of range(", size, "))");
    ++counts[v];
    identity &= v == i;
  }
  if (!identity) {
    for (int64_t f = 0; f < size; ++f)
      TORCH_CHECK_VALUE(counts[f] <= 1, op, ": ", name, " has duplicated entries (feature ", f, " appears ",
                        counts[f], " times); it must be a permutation of range(", size,
                        "), each feature in exactly one group");
  }
  if (identity) return {};
  // block_size promises aligned runs; it is verified, never trusted (a false promise means
  // element-level gathers, the same results).
  bool runs = block_size > 1;
  for (int64_t i = 0; i < size && runs; i += block_size) {
    runs = p[i] % block_size == 0;
    for (int64_t j = 1; j < block_size && runs; ++j) runs = p[i + j] == p[i] + j;
  }
  return {c, runs ? block_size : 1};
}

struct Problem {
  int64_t G, a, c;
  IndexArg in, out;
};

void check_values(const char* op, const Tensor& values) {
  TORCH_CHECK_VALUE(values.dim() == 3 && at::isFloatingType(values.scalar_type()), op,
                    ": values must be a floating tensor of shape (G, m/G, n/G), got ", dtype_str(values.scalar_type()),
                    " ", shape_str(values));
  TORCH_CHECK_VALUE(values.size(0) >= 1 && values.size(1) >= 1 && values.size(2) >= 1, op,
                    ": values must have G >= 1 groups and non-empty blocks, got shape ", shape_str(values));
}

void check_activation(const char* op, const char* name, const Tensor& t, int64_t width, const Tensor& like,
                      const char* like_name, const char* features) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == width, op, ": ", name, " must have shape (T, ", features, "=", width,
                    "), got ", shape_str(t));
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", dtype_str(t.scalar_type()),
                   " but ", like_name, " have ", dtype_str(like.scalar_type()), "; they must match");
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ", like_name,
                    " are on ", like.device(), "; all must share a device");
}

Problem check_indices(const char* op, const optional<Tensor>& in_index, const optional<Tensor>& out_index, int64_t G,
                      int64_t a, int64_t c, const at::Device& device, int64_t block_size) {
  TORCH_CHECK_VALUE(block_size >= 1, op, ": block_size must be a positive int, got ", block_size);
  const int64_t b = (a % block_size == 0 && c % block_size == 0) ? block_size : 1;  // else nothing to promise
  return {G, a, c, check_index(op, "in_index", in_index, G * c, device, b),
          check_index(op, "out_index", out_index, G * a, device, b)};
}

Problem check_linear(const Tensor& x, const Tensor& values, const optional<Tensor>& in_index,
                     const optional<Tensor>& out_index, const optional<Tensor>& bias, int64_t block_size) {
  const char* op = "linear";
  check_values(op, values);
  const int64_t G = values.size(0), a = values.size(1), c = values.size(2);
  check_activation(op, "x", x, G * c, values, "values", "in_features");
  if (bias.has_value() && bias->defined()) {
    const Tensor& b = *bias;
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == G * a, op, ": bias must have shape (", G * a,
                      ",) or be None, got ", shape_str(b));
    TORCH_CHECK_TYPE(b.scalar_type() == values.scalar_type(), op, ": bias has dtype ", dtype_str(b.scalar_type()),
                     " but values have ", dtype_str(values.scalar_type()), "; they must match");
    TORCH_CHECK_VALUE(b.device() == values.device(), op, ": bias is on ", b.device(), " but values are on ",
                      values.device(), "; all must share a device");
  }
  return check_indices(op, in_index, out_index, G, a, c, values.device(), block_size);
}

Problem check_linear_grad_input(const Tensor& grad_out, const Tensor& values, const optional<Tensor>& in_index,
                                const optional<Tensor>& out_index, int64_t block_size) {
  const char* op = "linear_grad_input";
  check_values(op, values);
  const int64_t G = values.size(0), a = values.size(1), c = values.size(2);
  check_activation(op, "grad_out", grad_out, G * a, values, "values", "out_features");
  return check_indices(op, in_index, out_index, G, a, c, values.device(), block_size);
}

Problem check_linear_grad_values(const Tensor& grad_out, const Tensor& x, const optional<Tensor>& in_index,
                                 const optional<Tensor>& out_index, int64_t groups, int64_t block_size) {
  const char* op = "linear_grad_values";
  TORCH_CHECK_VALUE(grad_out.dim() == 2, op, ": grad_out must be a 2-D (T, features) tensor, got ",
                    shape_str(grad_out));
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be a 2-D (T, features) tensor, got ", shape_str(x));
  TORCH_CHECK_VALUE(grad_out.size(0) == x.size(0), op, ": grad_out (T, m) and x (T, n) must share T, got ",
                    shape_str(grad_out), " and ", shape_str(x));
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()) && grad_out.scalar_type() == x.scalar_type(), op,
                   ": grad_out (", dtype_str(grad_out.scalar_type()), ") and x (", dtype_str(x.scalar_type()),
                   ") must share a floating dtype");
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(), " but x is on ",
                    x.device(), "; all must share a device");
  const int64_t m = grad_out.size(1), n = x.size(1);
  TORCH_CHECK_VALUE(groups >= 1 && m > 0 && n > 0 && m % groups == 0 && n % groups == 0, op, ": groups=", groups,
                    " must be a positive int dividing m=", m, " and n=", n);
  return check_indices(op, in_index, out_index, groups, m / groups, n / groups, x.device(), block_size);
}

// ----------------------------------------------------------------------------- the ops
// (the calls through the dispatcher, LinearSig and the other signatures: csrc/autograd_util.h)

// ------------------------------------------------------------------------ CPU kernels
// The CPU kernels' fallback is the op's Python implementation (its twin), registered when
// sao_kernels is imported.  A process that loaded only this library (a C++ program, an
// AOTInductor package run without sao_kernels) has none: say what runs there instead.
void require_python_twin(const c10::OperatorHandle& twin, const char* op, ScalarType dtype) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      twin.hasKernelForDispatchKey(c10::DispatchKey::CPU), "sao_kernels::", op, ": backend '", requested_backend(),
      "' with dtype ", dtype_str(dtype), " runs the op's Python implementation, which this process does not have "
      "(it loaded the ops library without importing sao_kernels); without it CPU tensors run the native kernels: ",
      "dtypes torch.float32, torch.bfloat16, torch.float16, torch.float64 with backend 'auto' or 'native'");
}

Tensor linear_cpu(const Tensor& x, const Tensor& values, const optional<Tensor>& in_index,
                  const optional<Tensor>& out_index, const optional<Tensor>& bias, int64_t block_size) {
  const auto [T, flops] = product_size(x, values);
  if (!runs_native(x.scalar_type(), T, flops)) {
    static const auto py = find_op<LinearSig>("sao_kernels::_linear_python");
    require_python_twin(py, "linear", x.scalar_type());
    return py.call(x, values, in_index, out_index, bias, block_size);
  }
  const Problem p = check_linear(x, values, in_index, out_index, bias, block_size);
  return linear_native(x, values, p.in, p.out, bias);
}

Tensor linear_grad_input_cpu(const Tensor& grad_out, const Tensor& values, const optional<Tensor>& in_index,
                             const optional<Tensor>& out_index, int64_t block_size) {
  const auto [T, flops] = product_size(grad_out, values);
  if (!runs_native(grad_out.scalar_type(), T, flops)) {
    static const auto py = find_op<GradInputSig>("sao_kernels::_linear_grad_input_python");
    require_python_twin(py, "linear_grad_input", grad_out.scalar_type());
    return py.call(grad_out, values, in_index, out_index, block_size);
  }
  const Problem p = check_linear_grad_input(grad_out, values, in_index, out_index, block_size);
  return linear_grad_input_native(grad_out, values, p.in, p.out);
}

Tensor linear_grad_values_cpu(const Tensor& grad_out, const Tensor& x, const optional<Tensor>& in_index,
                              const optional<Tensor>& out_index, int64_t groups, int64_t block_size) {
  const auto [T, flops] = grad_values_size(grad_out, x, groups);
  if (!runs_native(x.scalar_type(), T, flops)) {
    static const auto py = find_op<GradValuesSig>("sao_kernels::_linear_grad_values_python");
    require_python_twin(py, "linear_grad_values", x.scalar_type());
    return py.call(grad_out, x, in_index, out_index, groups, block_size);
  }
  const Problem p = check_linear_grad_values(grad_out, x, in_index, out_index, groups, block_size);
  return linear_grad_values_native(grad_out, x, p.in, p.out, groups);
}

// ------------------------------------------------------------------- autograd helpers
bool has_tangent(const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
bool has_tangent(const optional<Tensor>& t) { return t.has_value() && has_tangent(*t); }
Tensor tangent(const Tensor& t) { return t.defined() ? t._fw_grad(0) : Tensor(); }
Tensor tangent(const optional<Tensor>& t) { return t.has_value() ? tangent(*t) : Tensor(); }
// The value without its tangent (so that the ops computing a tangent do not start another).
Tensor primal(const Tensor& t) { return has_tangent(t) ? t._fw_primal(0) : t; }
optional<Tensor> primal(const optional<Tensor>& t) {
  return t.has_value() ? optional<Tensor>(primal(*t)) : std::nullopt;
}
optional<Tensor> opt(const Tensor& t) { return t.defined() ? optional<Tensor>(t) : std::nullopt; }
Tensor sum_defined(const Tensor& a, const Tensor& b) { return !a.defined() ? b : (!b.defined() ? a : a + b); }
// A backward node of one of the three ops: its two saved operands (an op is bilinear in
// them), index maps and block size.  Each op's node adds only its name and its formulas.
struct SaoBackward : public torch::autograd::TraceableFunction {
  SavedVariable first, second, in_index, out_index;
  int64_t block_size = 1;
  void release_variables() override {
    first.reset_data();
    second.reset_data();
    in_index.reset_data();
    out_index.reset_data();
  }
  // Each saved tensor is unpacked once per apply: saved-tensor hooks (non-reentrant
  // activation checkpointing, save_on_cpu) allow one unpack per tensor and backward.
  struct Unpacked {
    Tensor first, second;
    optional<Tensor> in_map, out_map;
  };
  template <typename NodePtr>  // (intrusive_ptr or shared_ptr, see NodeFactory)
  Unpacked unpack(const NodePtr& self, bool need_first, bool need_second) {
    Unpacked u;
    if (need_first) u.first = first.unpack(self);
    if (need_second) u.second = second.unpack(self);
    u.in_map = opt(in_index.unpack(self));
    u.out_map = opt(out_index.unpack(self));
    return u;
  }
};

// The node of an op whose differentiable inputs are `edges` (none requiring grad: no node).
template <typename NodeT, typename... Edges>
auto make_node(const Tensor& first, const Tensor& second, const optional<Tensor>& in_index,
               const optional<Tensor>& out_index, int64_t block_size, const Edges&... edges) {
  decltype(NodeFactory<NodeT>::make()) node;
  if (!torch::autograd::compute_requires_grad(edges...)) return node;
  node = NodeFactory<NodeT>::make();
  node->set_next_edges(torch::autograd::collect_next_edges(edges...));
  node->first = SavedVariable(first, false);
  node->second = SavedVariable(second, false);
  node->in_index = SavedVariable(saved_index(in_index), false);
  node->out_index = SavedVariable(saved_index(out_index), false);
  node->block_size = block_size;
  return node;
}

// ----------------------------------------------------------------------- forward op
struct LinearBackward : public SaoBackward {  // first x, second values; edges: x, values, bias
  bool has_bias = false;
  std::string name() const override { return "SaoLinearBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    const Tensor& dy = grads[0];
    if (!dy.defined()) return out;
    const bool dx = task_should_compute_output(0), dv = task_should_compute_output(1);
    const Unpacked u = unpack(getptr(), /*need_first=*/dv, /*need_second=*/true);  // x, values
    if (dx) out[0] = linear_grad_input(dy, u.second, u.in_map, u.out_map, block_size);
    const bool db = has_bias && task_should_compute_output(2);
    if (dv && db) {
      std::tie(out[1], out[2]) = grad_values_and_bias(dy, u.first, u.in_map, u.out_map, u.second.size(0), block_size);
    } else if (dv) {
      out[1] = linear_grad_values(dy, u.first, u.in_map, u.out_map, u.second.size(0), block_size);
    } else if (db) {
      out[2] = dy.sum(0);
    }
    return out;
  }
};

Tensor linear_autograd(const Tensor& x, const Tensor& values, const optional<Tensor>& in_index,
                       const optional<Tensor>& out_index, const optional<Tensor>& bias, int64_t block_size) {
  auto node = make_node<LinearBackward>(x, values, in_index, out_index, block_size, x, values, bias);
  if (node) node->has_bias = bias.has_value() && bias->defined();
  Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    y = linear(x, values, in_index, out_index, bias, block_size);
  }
  if (node) torch::autograd::set_history(y, node);
  if (has_tangent(x) || has_tangent(values) || has_tangent(bias)) {
    // dY = linear(dX; V) + linear(X; dV) + db
    const Tensor xt = tangent(x), vt = tangent(values), bt = tangent(bias);
    Tensor t;
    if (xt.defined()) t = linear(xt, primal(values), in_index, out_index, std::nullopt, block_size);
    if (vt.defined()) t = sum_defined(t, linear(primal(x), vt, in_index, out_index, std::nullopt, block_size));
    if (bt.defined()) t = t.defined() ? t + bt : bt.expand({x.size(0), bt.size(0)}).clone();
    y._set_fw_grad(t, /*level=*/0, /*is_inplace_op=*/false);
  }
  return y;
}

// ------------------------------------------------------------------- grad-input op
struct GradInputBackward : public SaoBackward {  // first grad_out, second values
  std::string name() const override { return "SaoLinearGradInputBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(2);
    const Tensor& g = grads[0];
    if (!g.defined()) return out;
    const bool d0 = task_should_compute_output(0), d1 = task_should_compute_output(1);
    const Unpacked u = unpack(getptr(), /*need_first=*/d1, /*need_second=*/true);  // grad_out, values
    // dx = dY @ V per group  =>  d(dY) = g @ V^T (the forward product), dV = dY^T @ g.
    if (d0) out[0] = linear(g, u.second, u.in_map, u.out_map, std::nullopt, block_size);
    if (d1) out[1] = linear_grad_values(u.first, g, u.in_map, u.out_map, u.second.size(0), block_size);
    return out;
  }
};

Tensor linear_grad_input_autograd(const Tensor& grad_out, const Tensor& values, const optional<Tensor>& in_index,
                                  const optional<Tensor>& out_index, int64_t block_size) {
  auto node = make_node<GradInputBackward>(grad_out, values, in_index, out_index, block_size, grad_out, values);
  Tensor dx;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    dx = linear_grad_input(grad_out, values, in_index, out_index, block_size);
  }
  if (node) torch::autograd::set_history(dx, node);
  if (has_tangent(grad_out) || has_tangent(values)) {
    const Tensor gt = tangent(grad_out), vt = tangent(values);
    Tensor t;
    if (gt.defined()) t = linear_grad_input(gt, primal(values), in_index, out_index, block_size);
    if (vt.defined()) t = sum_defined(t, linear_grad_input(primal(grad_out), vt, in_index, out_index, block_size));
    dx._set_fw_grad(t, 0, false);
  }
  return dx;
}

// ------------------------------------------------------------------ grad-values op
struct GradValuesBackward : public SaoBackward {  // first grad_out, second x
  std::string name() const override { return "SaoLinearGradValuesBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(2);
    const Tensor& g = grads[0];
    if (!g.defined()) return out;
    const bool d0 = task_should_compute_output(0), d1 = task_should_compute_output(1);
    const Unpacked u = unpack(getptr(), /*need_first=*/d1, /*need_second=*/d0);  // grad_out, x
    // dV_g = dY_g^T X_g  =>  d(dY)_g = X_g @ g_g^T (forward product with values g),
    //                        dX_g = dY_g @ g_g (grad-input product with values g).
    if (d0) out[0] = linear(u.second, g, u.in_map, u.out_map, std::nullopt, block_size);
    if (d1) out[1] = linear_grad_input(u.first, g, u.in_map, u.out_map, block_size);
    return out;
  }
};

Tensor linear_grad_values_autograd(const Tensor& grad_out, const Tensor& x, const optional<Tensor>& in_index,
                                   const optional<Tensor>& out_index, int64_t groups, int64_t block_size) {
  auto node = make_node<GradValuesBackward>(grad_out, x, in_index, out_index, block_size, grad_out, x);
  Tensor dv;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    dv = linear_grad_values(grad_out, x, in_index, out_index, groups, block_size);
  }
  if (node) torch::autograd::set_history(dv, node);
  if (has_tangent(grad_out) || has_tangent(x)) {
    const Tensor gt = tangent(grad_out), xt = tangent(x);
    Tensor t;
    if (gt.defined()) t = linear_grad_values(gt, primal(x), in_index, out_index, groups, block_size);
    if (xt.defined()) t = sum_defined(t, linear_grad_values(primal(grad_out), xt, in_index, out_index, groups, block_size));
    dv._set_fw_grad(t, 0, false);
  }
  return dv;
}

}  // namespace

LinearArgs check_linear_args(const Tensor& x, const Tensor& values, const optional<Tensor>& in_index,
                             const optional<Tensor>& out_index, const optional<Tensor>& bias, int64_t block_size) {
  const Problem p = check_linear(x, values, in_index, out_index, bias, block_size);
  return {p.in, p.out};
}
bool cpu_runs_native(ScalarType dtype, int64_t tokens, double flops) { return runs_native(dtype, tokens, flops); }

std::pair<Tensor, Tensor> grad_values_and_bias(const Tensor& grad_out, const Tensor& x, const optional<Tensor>& in_index,
                                               const optional<Tensor>& out_index, int64_t groups, int64_t block_size) {
  const auto [T, flops] = grad_values_size(grad_out, x, groups);
  const bool fused =
      !at::GradMode::is_enabled() && plain_cpu(grad_out) && plain_cpu(x) && runs_native(x.scalar_type(), T, flops);
  if (!fused) return {linear_grad_values(grad_out, x, in_index, out_index, groups, block_size), grad_out.sum(0)};
  RECORD_FUNCTION("sao_kernels::linear_grad_values", std::vector<c10::IValue>({grad_out, x}));
  const Problem p = check_linear_grad_values(grad_out, x, in_index, out_index, groups, block_size);
  Tensor db;
  Tensor dv = linear_grad_values_native(grad_out, x, p.in, p.out, groups, &db);
  return {dv, db};
}

}  // namespace sao

// The schemas of the three ops are in schemas.cpp; these are this library's own helpers.
TORCH_LIBRARY_FRAGMENT(sao_kernels, m) {
  m.def("_set_thread_backend(str name) -> ()", &sao::set_thread_backend);
  m.def("_native_runs(ScalarType dtype, int tokens=-1, float flops=-1.) -> bool", &sao::native_runs);
  m.def("_set_cpu_policy(str[] native_cells, int decode_tokens, float small_flops, float large_flops) -> ()", &sao::set_cpu_policy);
  m.def("_native_build_info() -> str", &sao::native_build_info);
  m.def("_weight_cache(bool on) -> ()", &sao::set_weight_cache);
  m.def("_weight_cache_stats() -> int[]", &sao::weight_cache_stats);
  m.def("_cpu_tier(bool hardware=False) -> str",
        [](bool hardware) { return std::string(sao::isa_name(hardware ? sao::hardware_isa() : sao::cpu_isa())); });
}

TORCH_LIBRARY_IMPL(sao_kernels, CPU, m) {
  m.impl("linear", TORCH_FN(sao::linear_cpu));
  m.impl("linear_grad_input", TORCH_FN(sao::linear_grad_input_cpu));
  m.impl("linear_grad_values", TORCH_FN(sao::linear_grad_values_cpu));
}

TORCH_LIBRARY_IMPL(sao_kernels, Autograd, m) {
  m.impl("linear", TORCH_FN(sao::linear_autograd));
  m.impl("linear_grad_input", TORCH_FN(sao::linear_grad_input_autograd));
  m.impl("linear_grad_values", TORCH_FN(sao::linear_grad_values_autograd));
}
