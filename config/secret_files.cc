#include "config/secret_files.h"

#include <sys/stat.h>

#include <cstdio>
#include <utility>

namespace outboxd {

namespace {

// Whether a file of this owner and mode can be read or written by others
// than its owner (and, for root's, than its group reading it).
bool TooOpen(const struct stat& st) {
  const mode_t others = st.st_uid == 0 ? (S_IWGRP | S_IXGRP | S_IRWXO) : (S_IRWXG | S_IRWXO);
  return (st.st_mode & others) != 0;
}

}  // namespace

std::vector<std::string> SecretFileWarnings(const Config& config) {
  // (file, the key that names it)
  std::vector<std::pair<std::string, std::string>> files;
  if (!config.postgres.password_file.empty()) {
    files.emplace_back(config.postgres.password_file, "password_file in [postgres]");
  }
  if (!config.kafka.password_file.empty()) files.emplace_back(config.kafka.password_file, "password_file in [kafka]");
  if (auto key = config.kafka.properties.find("ssl.key.location"); key != config.kafka.properties.end()) {
    files.emplace_back(key->second, "\"ssl.key.location\" in [kafka.properties]");
  }
  if (!config.http.tls_key_file.empty()) files.emplace_back(config.http.tls_key_file, "tls_key_file in [http]");
  if (!config.http.basic_auth_password_file.empty()) {
    files.emplace_back(config.http.basic_auth_password_file, "basic_auth_password_file in [http]");
  }

  std::vector<std::string> warnings;
  for (const auto& [path, key] : files) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !TooOpen(st)) continue;
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    warnings.push_back("\"" + path + "\" (" + key + ") holds a secret but has mode " + mode +
                       ": others than its owner may read it (chmod 600 \"" + path + "\")");
  }
  return warnings;
}

}  // namespace outboxd
