// Umbrella header: everything a user of shmbus needs.
#pragma once

#include <shmbus/error.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/version.hpp>
