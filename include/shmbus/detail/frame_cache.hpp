// frame_cache: one reusable block for the coroutine frames of a path that
// suspends often, so that waiting costs no heap allocation once warm.
//
// Every task frame carries a one-word prefix naming where its memory came
// from: a frame_cache, or the global heap (nullptr). A coroutine whose first
// parameter is a `frame_cache&` (the implicit object parameter counts, for
// member coroutines of a class deriving from frame_cache) gets its frame
// from that cache when the cache's block is free, and from the heap
// otherwise; its deletion hands the block back. So a subscriber that
// suspends in next() once per message allocates one frame, once.
//
//   block:  [ owner (frame_cache* or nullptr) | pad to 16 ][ coroutine frame ... ]
//                                                          ^ what the promise's new returns
//
// Not thread-safe: a cache serves the coroutines of one owner, one at a
// time, and must outlive them.
#pragma once

#include <cstddef>
#include <new>

namespace shmbus::detail {

class frame_cache {
 public:
  frame_cache() noexcept = default;
  frame_cache(const frame_cache&) = delete;
  frame_cache& operator=(const frame_cache&) = delete;
  ~frame_cache() { ::operator delete(m_block); }

  /// The cached block, grown to `n` bytes if needed; nullptr while it is
  /// lent out (a second coroutine then uses the heap).
  void* take(std::size_t n) {
    if (m_lent) return nullptr;
    if (n > m_size) {
      void* bigger = ::operator new(n);
      ::operator delete(m_block);
      m_block = bigger;
      m_size = n;
    }
    m_lent = true;
    return m_block;
  }
  void give_back() noexcept { m_lent = false; }

 private:
  void* m_block = nullptr;
  std::size_t m_size = 0;
  bool m_lent = false;
};

inline constexpr std::size_t frame_prefix_size = __STDCPP_DEFAULT_NEW_ALIGNMENT__;
static_assert(frame_prefix_size >= sizeof(frame_cache*));

inline void* allocate_frame(std::size_t n, frame_cache* cache) {
  void* block = cache != nullptr ? cache->take(n + frame_prefix_size) : nullptr;
  if (block == nullptr) {
    block = ::operator new(n + frame_prefix_size);
    cache = nullptr;
  }
  *static_cast<frame_cache**>(block) = cache;
  return static_cast<std::byte*>(block) + frame_prefix_size;
}

inline void free_frame(void* frame) noexcept {
  void* block = static_cast<std::byte*>(frame) - frame_prefix_size;
  if (frame_cache* owner = *static_cast<frame_cache**>(block))
    owner->give_back();
  else
    ::operator delete(block);
}

}  // namespace shmbus::detail
