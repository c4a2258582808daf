// Whether an EACCES on a bus's shared-memory object may go away: the rule
// an opener uses while a creator grants the object to its group
// (bus.cpp, "Granting a group"; docs/BUS.md). Its own header so that the
// rule can be tested without the race around it.
#pragma once

#include <chrono>
#include <string_view>

namespace shmbus::detail {

/// True when `object` (a POSIX shared-memory name, "/shmbus.<bus>...") was
/// created, or had its owner, group or mode changed, less than `timeout`
/// ago: probably a creator granting its group, about to or just done, so
/// an EACCES is worth another open. Whatever the mode is now: the grant
/// may have landed between the failed open and this look. False when there
/// is no such object.
bool may_be_granted_soon(std::string_view object, std::chrono::milliseconds timeout);

}  // namespace shmbus::detail
