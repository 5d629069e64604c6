// torch.ops.sao_kernels.linear_act: act(linear(x, values, in_index, out_index, bias)) for act
// tanh / relu / gelu, one op with one autograd node: what sao_kernels.fuse_chains puts in place
// of an SAO layer followed by its activation.
//
//  * CPU kernel: tanh, ReLU and GELU run in the native kernels' epilogue (csrc/activation.h),
//    on the accumulator tile while it is in cache, on the calling thread's items (no separate
//    elementwise pass, which under load waits on a descheduled OpenMP thread: profiled at
//    0.65 ms per 128 x 512 tanh on a loaded 2-core EPYC).  Every case the policy does not run
//    native is linear (the op, any backend) followed by the ATen activation.  A GELU whose
//    gradient is needed keeps its pre-activation: linear, then ATen's GELU (below).
//  * Autograd kernel (CPU): saves the output (tanh: 1 - y^2, ReLU: y > 0) or, for GELU, the
//    pre-activation; backward forms dPre = dY * act' and the bias gradient sum_t dPre in one
//    pass (float32 / float64; other dtypes: ATen's tanh_backward / threshold_backward, and the
//    sum from grad-values' pass over dPre where it has one: ops.cpp, grad_values_and_bias),
//    then the grad-input and grad-values ops.  With create_graph (or on traced / wrapped
//    tensors: torch.compile, torch.func) the same formulas run as differentiable ATen ops.
//    Forward-mode AD: dY = act'(pre) * (linear(dX) + linear(X; dV) + db).
//
// Other devices and builds without the extension run the torch composite registered as the
// op's CompositeImplicitAutograd kernel (sao_kernels/ops/linear_act.py): linear, then the
// activation, each with its own autograd.
#include "activation.h"
#include "autograd_util.h"
#include "sao_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <memory>
#include <string>
#include <type_traits>
#include <utility>

namespace sao {
namespace {

using std::optional;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

Act parse_act(const std::string& name) {
  if (name == "tanh") return Act::kTanh;
  if (name == "relu") return Act::kRelu;
  if (name == "gelu") return Act::kGelu;
  TORCH_CHECK_VALUE(false, "linear_act: activation='", name, "' is not supported; allowed: 'tanh', 'relu', 'gelu'");
}

Tensor apply_act(const Tensor& pre, Act act) {
  switch (act) {
    case Act::kTanh: return at::tanh(pre);
    case Act::kRelu: return at::relu(pre);
    case Act::kGelu: return at::gelu(pre);
    default: return pre;
  }
}

// ------------------------------------------------------------------------ CPU kernel
Tensor linear_act_cpu(const Tensor& x, const Tensor& values, const optional<Tensor>& in_index,
                      const optional<Tensor>& out_index, const optional<Tensor>& bias, int64_t block_size,
                      c10::string_view activation) {
  const Act act = parse_act(std::string(activation));
  if (x.dim() == 2 && values.dim() == 3) {
    const int64_t T = x.size(0);
    const double flops = 2.0 * T * values.size(0) * values.size(1) * values.size(2);
    if (cpu_runs_native(x.scalar_type(), T, flops)) {
      const LinearArgs p = check_linear_args(x, values, in_index, out_index, bias, block_size);
      return linear_native(x, values, p.in, p.out, bias, act);
    }
  }
  return apply_act(linear(x, values, in_index, out_index, bias, block_size), act);
}

// ------------------------------------------------------------------ activation backward
// One row of w columns: d = g * act'(y) (tanh: 1 - y^2; ReLU: y > 0), acc += d.
#define SAO_ACT_GRAD_ROW_BODY                                                            \
  if (act == Act::kTanh) {                                                               \
    for (int64_t k = 0; k < w; ++k) d[k] = g[k] * (T(1) - y[k] * y[k]);                  \
  } else {                                                                               \
    for (int64_t k = 0; k < w; ++k) d[k] = y[k] > T(0) ? g[k] : T(0);                    \
  }                                                                                      \
  if (acc)                                                                               \
    for (int64_t k = 0; k < w; ++k) acc[k] += d[k];

template <typename T>
void act_grad_row(const T* __restrict g, const T* __restrict y, T* __restrict d, T* __restrict acc, int64_t w,
                  Act act) {
  SAO_ACT_GRAD_ROW_BODY
}

#if SAO_X86
__attribute__((target("avx2,fma"))) void act_grad_row_avx2(const float* __restrict g, const float* __restrict y,
                                                            float* __restrict d, float* __restrict acc, int64_t w,
                                                            Act act) {
  using T = float;
  SAO_ACT_GRAD_ROW_BODY
}
#endif
#undef SAO_ACT_GRAD_ROW_BODY

// dPre = dY * act'(s) (s: the output, as tanh_backward / threshold_backward take it) and, with
// want_db, db = sum_t dPre, in one pass over column blocks (each column summed by one worker,
// rows in order: the same bits for any thread count).  float32 / float64.
template <typename T>
void act_grad_loop(const T* dy, const T* s, T* dpre, T* db, int64_t rows, int64_t m, Act act) {
  constexpr int64_t kCols = 256;
  const int64_t n_blocks = (m + kCols - 1) / kCols;
  // Below 32 k elements on the calling thread.  (The threshold was 256 k: at 128 x 512, float32,
  // two threads, splitting the two column blocks took the node's self time from 57 to 40 us per
  // layer of the 100-layer tanh MLP step, torch.profiler, AMD EPYC 2026-12-07.)
  const int64_t grain = rows * m < (1 << 15) ? n_blocks : 1;
  const auto body = [&](int64_t b0, int64_t b1) {
    T acc[kCols];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * kCols, w = std::min(kCols, m - c0);
      std::fill(acc, acc + w, T(0));
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t o = r * m + c0;
#if SAO_X86
        if constexpr (std::is_same_v<T, float>) {
          if (detail::has_avx2()) {
            act_grad_row_avx2(dy + o, s + o, dpre + o, db ? acc : nullptr, w, act);
            continue;
          }
        }
#endif
        act_grad_row<T>(dy + o, s + o, dpre + o, db ? acc : nullptr, w, act);
      }
      if (db) std::copy(acc, acc + w, db + c0);
    }
  };
  if (grain >= n_blocks || at::in_parallel_region()) {
    body(0, n_blocks);
  } else {
    at::parallel_for(0, n_blocks, grain, body);
  }
}

// (dPre, db): db only where this pass computed it (float32 / float64, want_db), else undefined
std::pair<Tensor, Tensor> act_backward(const Tensor& dy, const Tensor& saved, Act act, bool want_db) {
  // (float32 / float64 only: for bfloat16 the scalar conversions of this loop made the MLP100
  // step 3-7 % slower than ATen's vectorised tanh_backward + sum, measured on one thread)
  const bool wide = dy.scalar_type() == at::kFloat || dy.scalar_type() == at::kDouble;
  const bool fused = act != Act::kGelu && wide && !at::GradMode::is_enabled() && plain_cpu(dy) && plain_cpu(saved) &&
                     dy.dim() == 2 && dy.sizes() == saved.sizes() && dy.scalar_type() == saved.scalar_type();
  if (!fused) {
    Tensor d = act == Act::kTanh   ? at::tanh_backward(dy, saved)
               : act == Act::kRelu ? at::threshold_backward(dy, saved, 0)
                                   : at::gelu_backward(dy, saved);
    return {d, Tensor()};  // (the caller sums d: with grad-values where it can, grad_values_and_bias)
  }
  const Tensor g = dy.contiguous(), s = saved.contiguous();
  Tensor dpre = at::empty_like(g, at::MemoryFormat::Contiguous);
  Tensor db = want_db ? at::empty({g.size(1)}, g.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "sao_linear_act_backward", [&] {
    act_grad_loop<scalar_t>(g.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), dpre.data_ptr<scalar_t>(),
                            want_db ? db.data_ptr<scalar_t>() : nullptr, g.size(0), g.size(1), act);
  });
  return {dpre, db};
}

// -------------------------------------------------------------------------- autograd
bool has_tangent(const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
bool has_tangent(const optional<Tensor>& t) { return t.has_value() && has_tangent(*t); }
Tensor tangent(const Tensor& t) { return has_tangent(t) ? t._fw_grad(0) : Tensor(); }
Tensor tangent(const optional<Tensor>& t) { return t.has_value() ? tangent(*t) : Tensor(); }
Tensor primal(const Tensor& t) { return has_tangent(t) ? t._fw_primal(0) : t; }
optional<Tensor> opt(const Tensor& t) { return t.defined() ? optional<Tensor>(t) : std::nullopt; }
struct LinearActBackward : public torch::autograd::TraceableFunction {
  SavedVariable x, values, in_index, out_index, act_saved;  // act_saved: the output, or GELU's pre
  SavedVariable bias;  // GELU only: its pre-activation is recomputed, differentiably, for create_graph
  int64_t block_size = 1;
  Act act = Act::kTanh;
  bool has_bias = false;
  std::string name() const override { return "SaoLinearActBackward"; }
  void release_variables() override {
    x.reset_data();
    values.reset_data();
    in_index.reset_data();
    out_index.reset_data();
    act_saved.reset_data();
    bias.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    const Tensor& dy = grads[0];
    if (!dy.defined()) return out;
    const bool dx = task_should_compute_output(0), dv = task_should_compute_output(1);
    const bool dbias = has_bias && task_should_compute_output(2);
    auto self = getptr();
    // (GELU's saved pre-activation was computed below autograd: with create_graph it is
    // recomputed through the ops so that the second derivative sees its inputs)
    const bool regrad = act == Act::kGelu && at::GradMode::is_enabled();
    const Tensor v = values.unpack(self);
    const Tensor xs = (dv || regrad) ? x.unpack(self) : Tensor();
    const optional<Tensor> ii = opt(in_index.unpack(self)), oi = opt(out_index.unpack(self));
    const Tensor s = regrad ? linear(xs, v, ii, oi, opt(bias.unpack(self)), block_size) : act_saved.unpack(self);
    auto [dpre, db] = act_backward(dy, s, act, dbias);
    if (dx) out[0] = linear_grad_input(dpre, v, ii, oi, block_size);
    if (dv && dbias && !db.defined()) {
      std::tie(out[1], db) = grad_values_and_bias(dpre, xs, ii, oi, v.size(0), block_size);
    } else if (dv) {
      out[1] = linear_grad_values(dpre, xs, ii, oi, v.size(0), block_size);
    }
    if (dbias) out[2] = db.defined() ? db : dpre.sum(0);
    return out;
  }
};

Tensor linear_act_autograd(const Tensor& x, const Tensor& values, const optional<Tensor>& in_index,
                           const optional<Tensor>& out_index, const optional<Tensor>& bias, int64_t block_size,
                           c10::string_view activation) {
  static const auto op = find_op<LinearActSig>("sao_kernels::linear_act");
  const Act act = parse_act(std::string(activation));
  const bool forward_ad = has_tangent(x) || has_tangent(values) || has_tangent(bias);
  decltype(NodeFactory<LinearActBackward>::make()) node;
  if (torch::autograd::compute_requires_grad(x, values, bias)) {
    node = NodeFactory<LinearActBackward>::make();
    node->set_next_edges(torch::autograd::collect_next_edges(x, values, bias));
    node->x = SavedVariable(x, false);
    node->values = SavedVariable(values, false);
    node->in_index = SavedVariable(saved_index(in_index), false);
    node->out_index = SavedVariable(saved_index(out_index), false);
    node->block_size = block_size;
    node->act = act;
    node->has_bias = bias.has_value() && bias->defined();
    if (act == Act::kGelu && node->has_bias) node->bias = SavedVariable(*bias, false);
  }
  Tensor y, pre;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (act == Act::kGelu && (node || forward_ad)) {
      pre = linear(x, values, in_index, out_index, bias, block_size);
      y = at::gelu(pre);
    } else {
      y = op.call(x, values, in_index, out_index, bias, block_size, activation);
    }
  }
  if (node) {
    torch::autograd::set_history(y, node);
    node->act_saved = act == Act::kGelu ? SavedVariable(pre, false) : SavedVariable(y, /*is_output=*/true);
  }
  if (forward_ad) {
    // dY = act'(pre) * (linear(dX; V) + linear(X; dV) + db)
    const Tensor xt = tangent(x), vt = tangent(values), bt = tangent(bias);
    const Tensor vp = primal(values), xp = primal(x);
    Tensor t;
    if (xt.defined()) t = linear(xt, vp, in_index, out_index, std::nullopt, block_size);
    if (vt.defined()) {
      Tensor u = linear(xp, vt, in_index, out_index, std::nullopt, block_size);
      t = t.defined() ? t + u : u;
    }
    if (bt.defined()) t = t.defined() ? t + bt : bt.expand({x.size(0), bt.size(0)}).clone();
    const Tensor s = act == Act::kGelu ? primal(pre) : primal(y);
    y._set_fw_grad(act_backward(t, s, act, false).first, /*level=*/0, /*is_inplace_op=*/false);
  }
  return y;
}

}  // namespace
}  // namespace sao

TORCH_LIBRARY_IMPL(sao_kernels, CPU, m) { m.impl("linear_act", TORCH_FN(sao::linear_act_cpu)); }

TORCH_LIBRARY_IMPL(sao_kernels, AutogradCPU, m) { m.impl("linear_act", TORCH_FN(sao::linear_act_autograd)); }
