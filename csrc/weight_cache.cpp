// The inference weight cache (weight_cache.h).
#include "weight_cache.h"

#include <c10/core/StorageImpl.h>

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

namespace sao {
namespace {

struct Key {
  const void* data;
  std::vector<int64_t> sizes;
  at::ScalarType dtype;
  int layout, isa;
  bool operator<(const Key& o) const {
    return std::tie(data, sizes, dtype, layout, isa) < std::tie(o.data, o.sizes, o.dtype, o.layout, o.isa);
  }
};

struct Entry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  uint32_t version;
  Tensor buf;  // kByte, 64-byte aligned (the CPU allocator's alignment)
};

std::mutex mu;
std::atomic<bool> on{false};  // read without the lock first: a forward outside the block never takes mu
std::map<Key, Entry> entries;

}  // namespace

namespace detail {

Tensor cached_layout(const Tensor& v, Layout layout, size_t bytes, const std::function<void(void*)>& fill) {
  if (!on.load(std::memory_order_relaxed) || v.is_inference() || !v.is_contiguous()) return Tensor();
  std::lock_guard<std::mutex> lock(mu);
  if (!on) return Tensor();  // switched off meanwhile
  const Key key{v.data_ptr(), v.sizes().vec(), v.scalar_type(), int(layout), int(cpu_isa())};
  const uint32_t version = v.unsafeGetTensorImpl()->version_counter().current_version();
  c10::StorageImpl* storage = v.storage().unsafeGetStorageImpl();
  auto it = entries.find(key);
  if (it != entries.end()) {
    const Entry& e = it->second;
    const auto alive = e.storage.lock();
    if (alive.get() == storage && e.version == version && size_t(e.buf.numel()) == bytes) return e.buf;
    if (alive.get() == storage && size_t(e.buf.numel()) == bytes && e.buf.use_count() == 1) {
      fill(e.buf.data_ptr());  // the weight changed: refill its buffer in place (no new pages)
      it->second.version = version;
      return e.buf;
    }
    entries.erase(it);
  }
  // Entries of weights freed since: a freed storage's address may come back for another tensor.
  for (auto i = entries.begin(); i != entries.end();) i = i->second.storage.expired() ? entries.erase(i) : std::next(i);
  Tensor buf = at::empty({int64_t(bytes)}, v.options().dtype(at::kByte));
  fill(buf.data_ptr());
  entries.insert_or_assign(key, Entry{v.storage().getWeakStorageImpl(), version, buf});
  return buf;
}

}  // namespace detail

void set_weight_cache(bool enable) {
  std::lock_guard<std::mutex> lock(mu);
  on = enable;
  if (!enable) entries.clear();
}

std::vector<int64_t> weight_cache_stats() {
  std::lock_guard<std::mutex> lock(mu);
  int64_t bytes = 0;
  for (const auto& [k, e] : entries) bytes += e.buf.numel();
  return {bytes, int64_t(entries.size())};
}

}  // namespace sao
