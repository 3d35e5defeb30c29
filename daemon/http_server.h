#pragma once
// HttpServer: the [http] listener, answering
//
//   GET /metrics   the Prometheus text format of a Metrics registry
//   GET /healthz   200 "ok" while every relay loop turns, else 503 naming it
//   GET /readyz    200 "ready" when every relay is connected and running and
//                  Kafka answered lately, else 503 with the reasons
//
// (HEAD too; other methods 405, other paths 404). Over HTTPS when [http]
// names a certificate and key (OpenSSL, TLS 1.2 or newer), and asking for
// HTTP basic authentication on /metrics — and on the health endpoints with
// basic_auth_health — when [http] names a user: 401 without the right one.
//
// A small server of its own rather than an embedded library: it answers
// three fixed paths, one request per connection (Connection: close), each
// within kIoTimeout. One thread accepts; kWorkers threads serve, so a slow
// client holds one worker, never the listener. Everything it reads from
// Metrics is thread-safe. Owned by the daemon's Run(); the Metrics must
// outlive it. The destructor stops accepting and joins the threads.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "pipeline/metrics.h"

struct ssl_ctx_st;

namespace outboxd {

class HttpServer {
 public:
  // A request's reading and its answer's writing each end after this long.
  static constexpr std::chrono::seconds kIoTimeout{10};
  static constexpr int kWorkers = 4;

  // Listens on config.listen ("host:port" or "[v6]:port", as [http] listen
  // allows; required). An address that cannot be bound (in use, not local,
  // no permission) is a kFatal error naming it; a certificate or key that
  // cannot be loaded is kInvalidConfig naming the file.
  [[nodiscard]] static Result<std::unique_ptr<HttpServer>> Start(const HttpConfig& config, Metrics& metrics);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  const std::string& address() const { return address_; }

  // One parsed request, as far as the server looks at it.
  struct Request {
    std::string method;
    std::string path;           // without the query
    std::string authorization;  // the Authorization header's value, or ""
  };
  struct Response {
    int status = 200;
    std::string content_type;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  // besides the usual ones
  };
  // What the server answers to `request` (no I/O).
  Response Answer(const Request& request) const;

 private:
  HttpServer(const HttpConfig& config, Metrics& metrics);
  [[nodiscard]] Status LoadTls();
  [[nodiscard]] Status Listen();
  void AcceptLoop();
  void WorkLoop();
  void Serve(UniqueFd fd) const;

  const std::string address_;
  const HttpConfig config_;
  const std::string expected_credentials_;  // base64 of "user:password"; empty without basic auth
  Metrics& metrics_;
  ssl_ctx_st* tls_ = nullptr;  // owned; null over plain HTTP
  UniqueFd listener_;
  UniqueFd stop_;  // eventfd: readable once the destructor runs

  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<UniqueFd> accepted_;  // guarded by mu_
  bool stopping_ = false;          // guarded by mu_
  std::thread acceptor_;
  std::vector<std::thread> workers_;
};

}  // namespace outboxd
