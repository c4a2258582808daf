// Symbol visibility: the library is built with hidden visibility and exports
// exactly what carries SHMBUS_API.
#pragma once

#define SHMBUS_API __attribute__((visibility("default")))
