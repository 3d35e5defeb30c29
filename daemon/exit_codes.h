#pragma once
// Process exit codes, from sysexits.h where one fits, so that systemd units
// can be told not to restart on configuration errors
// (RestartPreventExitStatus=78).

namespace outboxd {

constexpr int kExitOk = 0;
constexpr int kExitUsage = 64;        // EX_USAGE: bad command line
constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE: a service failed for good
constexpr int kExitSoftware = 70;     // EX_SOFTWARE: internal error
constexpr int kExitConfig = 78;       // EX_CONFIG: configuration or schema error

}  // namespace outboxd
