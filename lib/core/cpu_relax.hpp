// Telling the core that it is spinning on a value another core will write.
//
// On x86 PAUSE lets the sibling hyperthread run, saves power, and keeps the
// loop from filling the pipeline with speculative loads of the polled line,
// which would be thrown away (a memory-order flush) when the line changes.
// It takes about 19 ns on the Zen 5 host of docs/BENCHMARKS.md.
#pragma once

namespace shmbus::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace shmbus::detail
