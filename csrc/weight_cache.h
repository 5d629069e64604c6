// The inference weight cache (sao_kernels.frozen_weights(); docs/cpu_engines.md, "The weight
// cache for inference"): while it is on, a forward keeps the re-laid V it would build per call
// (the bfloat16 micro-kernel's panels, the brgemm's V^T or VNNI-packed B) between calls, one
// entry per weight tensor and layout, rebuilt when the weight's version counter moved.
#pragma once

#include "native_util.h"

#include <functional>

namespace sao {
namespace detail {

// The layouts kept (part of an entry's key, with the element type and the tier).
enum class Layout : int { kBf16Panels = 1, kBrgemmVT = 2 };

// Layout `layout` of weight v (`bytes` long), built by fill(dst) on a miss: the first call, v's
// version counter moved since (an in-place write through v or a view of it), or its storage was
// freed (an entry never outlives its weight's storage: it holds a weak reference).  Undefined
// where nothing is cached: the cache is off, or v cannot be tracked (an inference tensor has no
// version counter, a non-contiguous v is copied per call).  The tensor returned keeps the buffer
// alive while the caller reads it, even if another thread replaces the entry.
Tensor cached_layout(const Tensor& v, Layout layout, size_t bytes, const std::function<void(void*)>& fill);

}  // namespace detail
}  // namespace sao
