// Umbrella header: everything a user of shmbus needs.
#pragma once

#include <shmbus/bus.hpp>
#include <shmbus/channel.hpp>
#include <shmbus/error.hpp>
#include <shmbus/event_fd.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/io.hpp>
#include <shmbus/log.hpp>
#include <shmbus/region.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>
#include <shmbus/timeout.hpp>
#include <shmbus/version.hpp>
#include <shmbus/when_all.hpp>
