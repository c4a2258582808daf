// An asymmetric memory barrier between processes.
//
// The parking handshake (a subscriber stores "parked" then loads the commit
// word; a publisher stores the commit word then loads "parked") and the
// joining of a second publisher are Dekker-style: each side stores, then
// loads what the other side stored. Done symmetrically, each side needs a
// full fence between its store and its load (an `mfence` or a locked
// instruction on x86-64), and on the publishing side that fence is paid
// per message: it waits for the payload's cache lines to reach the other
// core before the next message can start.
//
// When one side runs millions of times a second and the other rarely, the
// frequent side can keep only the compiler's ordering (light_barrier) if
// the rare side, between its store and its load, runs heavy_barrier():
// membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) makes every CPU that runs a
// thread of a registered process execute a full barrier before it returns.
// For each thread of the frequent side, the barrier falls either after its
// store (which is then visible to the rare side's load) or before its load
// (which then sees the rare side's store). A thread that is not running
// passed a full barrier when it was switched out.
//
// The frequent side's process must register first (enable_light_barriers);
// kernels before 4.16, or sandboxes that forbid membarrier, refuse, and
// then the frequent side keeps its full fences.
#pragma once

#include <atomic>

namespace shmbus::detail {

/// Registers this process for heavy barriers run by other processes (once;
/// later calls return the first answer). True if light barriers may be
/// relied on from now on.
bool enable_light_barriers() noexcept;

/// The frequent side: keeps the compiler from moving memory accesses
/// across it, and costs nothing at run time.
inline void light_barrier() noexcept { std::atomic_signal_fence(std::memory_order_seq_cst); }

/// The rare side: a full barrier on every CPU that runs a registered
/// process (about 1 µs when none runs, 10-15 µs on a VM when one does).
/// False if the system refused; the caller must then not rely on it.
bool heavy_barrier() noexcept;

}  // namespace shmbus::detail
