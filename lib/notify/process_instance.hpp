// this_process_instance<T>(): one T per process, made on first use, made
// anew in a forked child, for the library's per-process threads (the
// doorbell server's, the fetcher's).
//
// A T records the pid that made it in a member `pid`. After fork() the one
// inherited from the parent belongs to the parent (its threads do not exist
// in the child): it is left alone (leaked) and the child's first use makes
// its own. The T of the process that made it is deleted at exit (its
// destructor stops and joins its thread).
//
// fork() copies a mutex as it is: one that another thread held while making
// a T would stay locked in the child, and the child's first use would wait
// forever. So fork() waits for the mutex (pthread_atfork: locked before the
// fork, unlocked after it on both sides).
#pragma once

#include <shmbus/error.hpp>

#include <pthread.h>
#include <unistd.h>

#include <cstdint>
#include <mutex>

namespace shmbus::detail {

template <class T>
struct instance_holder {
  std::mutex mutex;
  T* current = nullptr;

  static instance_holder& get() {
    static instance_holder h;
    return h;
  }
  instance_holder() {
    if (int err = ::pthread_atfork(&lock, &unlock, &unlock); err != 0) throw_errno(err, "pthread_atfork", "shmbus");
  }
  ~instance_holder() {
    if (current != nullptr && current->pid == static_cast<std::int32_t>(::getpid())) delete current;
  }
  instance_holder(const instance_holder&) = delete;
  instance_holder& operator=(const instance_holder&) = delete;

  static void lock() noexcept { get().mutex.lock(); }
  static void unlock() noexcept { get().mutex.unlock(); }
};

/// This process's T. Thread-safe; throws what T's constructor throws.
template <class T>
T& this_process_instance() {
  instance_holder<T>& h = instance_holder<T>::get();
  std::lock_guard lock(h.mutex);
  const auto pid = static_cast<std::int32_t>(::getpid());
  if (h.current == nullptr || h.current->pid != pid) h.current = new T();
  return *h.current;
}

}  // namespace shmbus::detail
