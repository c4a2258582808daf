// Asking for a cache line ahead of the access that needs it.
//
// Writing: a cache line in the state a store needs, ahead of the store.
// A store to a line another core holds (a subscriber polling the commit
// word there) waits for that core to give the line up. x86 cores ask for it
// only when the store leaves the store buffer, after every older
// instruction has retired, so the whole claim sits in front of that wait.
// A write prefetch (PREFETCHW) asks as soon as the address is known, and the
// claim runs while the line travels.
//
// Writing ahead (while the publisher streams, or always if it asks:
// publisher_options::prefetch_ahead): the lines a claim about a kilobyte
// later will write, in streams of frames up to two lines. A stream's lines
// were last held by the subscriber's core (it read them a lap ago), and a
// store waits in the store queue until its line is back: the queue holds the
// stores of only a few frames, so a publisher that asks for each line at its
// own store has only a few lines in flight, and on a host that places the two
// cores far apart it spends most of its time waiting. Asked for a kilobyte
// early, the lines arrive before the stores do (docs/BENCHMARKS.md, "The
// fourteenth round").
//
// Reading: the second line of a two-line frame. The reader can ask for it
// only once it has seen the commit word, and the copy that reads it comes
// after the reader's checks and its caller's steps; asked for as soon as
// the length is known, the line travels while they run.
#pragma once

namespace shmbus::detail {

/// Starts fetching the cache line holding `p` for writing. A hint only: it
/// never faults, whatever `p` is.
inline void prefetch_for_write(const void* p) noexcept {
#if defined(__x86_64__)
  // Written out: compilers emit PREFETCHW only when told the CPU has it
  // (-mprfchw). Every x86-64 CPU with it since 2003 (AMD) and 2014 (Intel)
  // runs it; Intel's earlier ones decode its opcode, 0F 0D, as a NOP.
  __asm__ __volatile__("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1, 3);
#endif
}

/// Starts fetching the cache line holding `p` for reading. A hint only.
inline void prefetch_for_read(const void* p) noexcept { __builtin_prefetch(p, 0, 3); }

}  // namespace shmbus::detail
