#pragma once
// A hash of the trainable parameters' values (FNV-1a over their bytes, in visiting order), for
// the periodic check that every rank of a data-parallel run still holds the same parameters:
// the ranks apply the same summed gradient, so any difference (a rank-dependent decision, a
// reduction that was not bit-identical) is a bug that would otherwise go unnoticed.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sora/core/param.hpp"

namespace sora::dist {

inline std::uint64_t fnv1a(const void* data, std::size_t bytes,
                           std::uint64_t hash = 0xcbf29ce484222325ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) {
    hash ^= p[i];
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

// Host tensors only (the CPU backend's Param).
// On a device backend each value is downloaded first (Backend::to_host).
template <class T, class Backend>
std::uint64_t hash_values(const std::vector<Param<T, Backend>*>& params) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (const Param<T, Backend>* p : params) {
    const auto& value = Backend::to_host(p->value);
    const auto bytes = static_cast<std::size_t>(value.size()) * sizeof(T);
    hash = fnv1a(value.data(), bytes, hash);
  }
  return hash;
}

}  // namespace sora::dist
