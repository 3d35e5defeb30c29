#include "daemon/http_server.h"

#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "common/logging.h"

namespace outboxd {

namespace {

// The most a request line and its headers may take; a scrape's are < 1 KiB.
constexpr std::size_t kMaxRequestBytes = 8192;
// Connections accepted and not yet taken by a worker; beyond it, new ones
// are closed at once.
constexpr std::size_t kMaxQueued = 64;

// OpenSSL's queued errors, oldest first, as one line; clears the queue.
std::string OpenSslErrors() {
  std::string text;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!text.empty()) text += "; ";
    text += buf;
  }
  return text.empty() ? "unknown error" : text;
}

std::string Base64(const std::string& data) {
  std::vector<unsigned char> out(4 * ((data.size() + 2) / 3) + 1);
  const int n =
      EVP_EncodeBlock(out.data(), reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  return {reinterpret_cast<const char*>(out.data()), static_cast<std::size_t>(n)};
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    default:
      return "";
  }
}

// "host:port" or "[v6]:port" (as the loader checked it) split in two.
std::pair<std::string, std::string> SplitAddress(const std::string& address) {
  const std::size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return {host, address.substr(colon + 1)};
}

// One connection's reads and writes, over TLS or not.
class Connection {
 public:
  Connection(int fd, ssl_ctx_st* tls) : fd_(fd) {
    if (tls != nullptr) ssl_ = SSL_new(tls);
  }
  ~Connection() {
    if (ssl_ != nullptr) {
      if (handshaken_) SSL_shutdown(ssl_);
      SSL_free(ssl_);
    }
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // The TLS handshake; true at once over plain HTTP.
  bool Handshake() {
    if (ssl_ == nullptr) return true;
    if (SSL_set_fd(ssl_, fd_) != 1) return false;
    handshaken_ = SSL_accept(ssl_) == 1;
    if (!handshaken_) Logger("http")->debug("TLS handshake failed: {}", OpenSslErrors());
    return handshaken_;
  }
  // Up to `size` bytes; 0 at the end of the stream or on an error (timeout).
  std::size_t Read(char* data, std::size_t size) {
    if (ssl_ != nullptr) {
      std::size_t n = 0;
      return SSL_read_ex(ssl_, data, size, &n) == 1 ? n : 0;
    }
    while (true) {
      const ssize_t n = ::read(fd_, data, size);
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno != EINTR) return 0;
    }
  }
  bool WriteAll(std::string_view data) {
    while (!data.empty()) {
      std::size_t n = 0;
      if (ssl_ != nullptr) {
        if (SSL_write_ex(ssl_, data.data(), data.size(), &n) != 1) return false;
      } else {
        const ssize_t w = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        n = static_cast<std::size_t>(w);
      }
      data.remove_prefix(n);
    }
    return true;
  }

 private:
  int fd_;
  SSL* ssl_ = nullptr;  // owned
  bool handshaken_ = false;
};

// Reads the request line and headers; nullopt with `status` set when it
// cannot (400: malformed or cut short, 431: too large).
std::optional<HttpServer::Request> ReadRequest(Connection& conn, int& status) {
  std::string head;
  char buf[2048];
  std::size_t end = std::string::npos;
  while ((end = head.find("\r\n\r\n")) == std::string::npos) {
    if (head.size() > kMaxRequestBytes) {
      status = 431;
      return std::nullopt;
    }
    const std::size_t n = conn.Read(buf, sizeof buf);
    if (n == 0) {
      status = 400;
      return std::nullopt;
    }
    head.append(buf, n);
  }
  head.resize(end + 2);  // each line ends with "\r\n"
  HttpServer::Request request;
  std::size_t line_end = head.find("\r\n");
  const std::string_view line(head.data(), line_end);
  const std::size_t sp1 = line.find(' ');
  const std::size_t sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp2 == sp1 || !line.substr(sp2 + 1).starts_with("HTTP/1.")) {
    status = 400;
    return std::nullopt;
  }
  request.method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  request.path = target.substr(0, target.find('?'));
  for (std::size_t start = line_end + 2; start < head.size(); start = line_end + 2) {
    line_end = head.find("\r\n", start);
    const std::string_view header(head.data() + start, line_end - start);
    constexpr std::string_view kAuthorization = "authorization:";
    if (header.size() > kAuthorization.size() &&
        strncasecmp(header.data(), kAuthorization.data(), kAuthorization.size()) == 0) {
      std::string_view value = header.substr(kAuthorization.size());
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
      request.authorization = value;
    }
  }
  return request;
}

void WriteResponse(Connection& conn, const HttpServer::Response& r, bool with_body) {
  std::string head = "HTTP/1.1 " + std::to_string(r.status) + " " + std::string(ReasonPhrase(r.status)) + "\r\n";
  if (!r.content_type.empty()) head += "Content-Type: " + r.content_type + "\r\n";
  for (const auto& [name, value] : r.headers) head += name + ": " + value + "\r\n";
  head +=
      "Cache-Control: no-store\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\nConnection: close\r\n\r\n";
  if (conn.WriteAll(head) && with_body) conn.WriteAll(r.body);
}

}  // namespace

HttpServer::HttpServer(const HttpConfig& config, Metrics& metrics)
    : address_(config.listen.value_or("")),
      config_(config),
      expected_credentials_(
          config.basic_auth_password ? Base64(config.basic_auth_user + ":" + *config.basic_auth_password) : ""),
      metrics_(metrics) {}

HttpServer::Response HttpServer::Answer(const Request& request) const {
  const bool metrics = request.path == "/metrics";
  const bool health = request.path == "/healthz" || request.path == "/readyz";
  if (!metrics && !health) return {404, "text/plain; charset=utf-8", "not found\n", {}};
  if (request.method != "GET" && request.method != "HEAD") return {405, "", "", {{"Allow", "GET, HEAD"}}};
  if (!expected_credentials_.empty() && (metrics || config_.basic_auth_health)) {
    constexpr std::string_view kScheme = "Basic ";
    const std::string& given = request.authorization;
    const bool right =
        given.size() == kScheme.size() + expected_credentials_.size() &&
        strncasecmp(given.data(), kScheme.data(), kScheme.size()) == 0 &&
        CRYPTO_memcmp(given.data() + kScheme.size(), expected_credentials_.data(), expected_credentials_.size()) == 0;
    if (!right) return {401, "", "", {{"WWW-Authenticate", "Basic realm=\"outboxd\", charset=\"UTF-8\""}}};
  }
  if (metrics) return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_.Serialize(), {}};
  const Metrics::Report r = request.path == "/healthz" ? metrics_.Liveness() : metrics_.Readiness();
  return {r.ok ? 200 : 503, "text/plain; charset=utf-8", r.body, {}};
}

Status HttpServer::LoadTls() {
  ERR_clear_error();
  tls_ = SSL_CTX_new(TLS_server_method());
  if (tls_ == nullptr) return Status::Internal("[http] TLS: " + OpenSslErrors());
  if (SSL_CTX_set_min_proto_version(tls_, TLS1_2_VERSION) != 1) {
    return Status::Internal("[http] TLS 1.2 is not available: " + OpenSslErrors());
  }
  if (SSL_CTX_use_certificate_chain_file(tls_, config_.tls_cert_file.c_str()) != 1) {
    return Status::InvalidConfig("[http] tls_cert_file \"" + config_.tls_cert_file +
                                 "\" cannot be used: " + OpenSslErrors());
  }
  if (SSL_CTX_use_PrivateKey_file(tls_, config_.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    const bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
    return Status::InvalidConfig("[http] tls_key_file \"" + config_.tls_key_file + "\" " +
                                 (mismatch ? "is not the key of tls_cert_file \"" + config_.tls_cert_file + "\""
                                           : std::string("cannot be used")) +
                                 ": " + OpenSslErrors());
  }
  return Status::Ok();
}

Status HttpServer::Listen() {
  auto fail = [&](const std::string& why) {
    return Status::Fatal("[http] listen = \"" + address_ + "\": could not listen: " + why);
  };
  const auto [host, port] = SplitAddress(address_);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return fail(::gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> addresses(found, &::freeaddrinfo);
  std::string why = "no address";
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd.valid()) {
      why = std::strerror(errno);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd.get(), 64) != 0) {
      why = std::strerror(errno);
      continue;
    }
    listener_ = std::move(fd);
    return Status::Ok();
  }
  return fail(why);
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpConfig& config, Metrics& metrics) {
  std::unique_ptr<HttpServer> server(new HttpServer(config, metrics));
  const bool tls = !config.tls_cert_file.empty();
  if (tls) OUTBOXD_RETURN_IF_ERROR(server->LoadTls());
  OUTBOXD_RETURN_IF_ERROR(server->Listen());
  server->stop_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!server->stop_.valid()) return Status::Internal(std::string("eventfd: ") + std::strerror(errno));
  server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  for (int i = 0; i < kWorkers; ++i) server->workers_.emplace_back([s = server.get()] { s->WorkLoop(); });
  Logger("http")->info("listening on {} over {} (/metrics, /healthz, /readyz){}", server->address_,
                       tls ? "HTTPS" : "HTTP",
                       server->expected_credentials_.empty() ? ""
                       : config.basic_auth_health            ? "; each asks for basic authentication"
                                                             : "; /metrics asks for basic authentication");
  return server;
}

HttpServer::~HttpServer() {
  if (stop_.valid()) {
    const uint64_t one = 1;
    while (::write(stop_.get(), &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  ready_.notify_all();
  if (acceptor_.joinable()) acceptor_.join();
  for (std::thread& w : workers_) w.join();
  if (tls_ != nullptr) SSL_CTX_free(tls_);
}

void HttpServer::AcceptLoop() {
  while (true) {
    pollfd fds[] = {{listener_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      Logger("http")->error("poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) continue;  // the client gave up, or out of descriptors for now
    const timeval timeout{kIoTimeout.count(), 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    std::lock_guard lock(mu_);
    if (accepted_.size() >= kMaxQueued) continue;  // closed: overloaded
    accepted_.push_back(std::move(fd));
    ready_.notify_one();
  }
}

void HttpServer::WorkLoop() {
  while (true) {
    UniqueFd fd;
    {
      std::unique_lock lock(mu_);
      ready_.wait(lock, [&] { return stopping_ || !accepted_.empty(); });
      if (stopping_) return;
      fd = std::move(accepted_.front());
      accepted_.pop_front();
    }
    Serve(std::move(fd));
  }
}

void HttpServer::Serve(UniqueFd fd) const {
  Connection conn(fd.get(), tls_);
  if (!conn.Handshake()) return;
  int status = 0;
  const std::optional<Request> request = ReadRequest(conn, status);
  if (!request) {
    WriteResponse(conn, {status, "text/plain; charset=utf-8", std::string(ReasonPhrase(status)) + "\n", {}}, true);
    return;
  }
  WriteResponse(conn, Answer(*request), request->method != "HEAD");
}

}  // namespace outboxd
