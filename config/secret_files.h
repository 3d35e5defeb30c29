#pragma once
// Secret files the configuration names — password files and private keys —
// that others than their owner may read. outboxd warns about each (at start
// and in check-config) and goes on: the operator may mean it, and libpq
// already refuses such an sslkey by itself.

#include <string>
#include <vector>

#include "config/config.h"

namespace outboxd {

// One warning per such file: its mode gives group or others any access, or,
// for a file owned by root, more than group read (0640, which libpq also
// allows, for root-owned files a service's group reads). Files that cannot be
// examined are left to whatever reads them.
std::vector<std::string> SecretFileWarnings(const Config& config);

}  // namespace outboxd
