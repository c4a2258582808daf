// Copying a small struct that was stored a moment ago.
//
// A loan's claim ticket and a received message are stored one field at a
// time (by the ring, by a read) and copied on at once (into a loan, out of
// an awaitable). A compiler copies a struct in 16-byte pieces, and a load
// that spans two younger stores cannot take their data from the store
// buffer (nor can an 8-byte load over a one-byte store): it waits until
// every older store has reached the cache, the last message's payload
// among them, whose lines a subscriber may be holding. Measured here: 15
// ns per 4 KiB loan, and 20 ns per co_await next() after a 4 KiB publish,
// in one thread.
//
// So such copies load each field into a register of its own first:
// in_registers() makes the compiler do that (an empty asm statement that
// takes each value in a general register), after which it cannot fuse the
// loads into wider ones.
#pragma once

namespace shmbus::detail {

template <class T>
inline void in_register(T& value) noexcept {
  __asm__("" : "+r"(value));
}

template <class... T>
inline void in_registers(T&... values) noexcept {
  (in_register(values), ...);
}

}  // namespace shmbus::detail
