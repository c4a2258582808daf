// FIFO of coroutines ready to resume: a power-of-two ring that grows by
// doubling, so once it has reached the working set's size it never
// allocates again.
#pragma once

#include <coroutine>
#include <cstddef>
#include <memory>

namespace shmbus::detail {

class ready_queue {
 public:
  explicit ready_queue(std::size_t initial_capacity = 256)
      : m_slots(std::make_unique<std::coroutine_handle<>[]>(initial_capacity)), m_mask(initial_capacity - 1) {}

  bool empty() const noexcept { return m_head == m_tail; }
  std::size_t size() const noexcept { return m_tail - m_head; }

  void push(std::coroutine_handle<> h) {
    if (size() == m_mask + 1) grow();
    m_slots[m_tail++ & m_mask] = h;
  }

  std::coroutine_handle<> pop() noexcept { return m_slots[m_head++ & m_mask]; }

 private:
  void grow() {
    const std::size_t capacity = (m_mask + 1) * 2;
    auto bigger = std::make_unique<std::coroutine_handle<>[]>(capacity);
    std::size_t n = 0;
    for (std::size_t i = m_head; i != m_tail; ++i) bigger[n++] = m_slots[i & m_mask];
    m_slots = std::move(bigger);
    m_mask = capacity - 1;
    m_head = 0;
    m_tail = n;
  }

  std::unique_ptr<std::coroutine_handle<>[]> m_slots;
  std::size_t m_mask;
  std::size_t m_head = 0;  // positions only grow; slot = position & mask
  std::size_t m_tail = 0;
};

}  // namespace shmbus::detail
