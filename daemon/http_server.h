#pragma once
// HttpServer: the [http] listener. An embedded civetweb server (Debian's
// libcivetweb) answering
//
//   GET /metrics   the Prometheus text format of a Metrics registry
//   GET /healthz   200 "ok" while every relay loop turns, else 503 naming it
//   GET /readyz    200 "ready" when every relay is connected and running and
//                  Kafka answered lately, else 503 with the reasons
//
// on its own small pool of threads. Everything it reads from Metrics is
// thread-safe. Owned by the daemon's Run(); the Metrics must outlive it. The
// destructor stops the listener and waits for requests being served.

#include <memory>
#include <string>

#include "common/status.h"
#include "pipeline/metrics.h"

struct mg_context;
struct mg_connection;

namespace outboxd {

class HttpServer {
 public:
  // Listens on `address` ("host:port" or "[v6]:port", as [http] listen
  // allows). An address that cannot be bound (in use, not local, no
  // permission) is a kFatal error naming it.
  [[nodiscard]] static Result<std::unique_ptr<HttpServer>> Start(const std::string& address, Metrics& metrics);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  const std::string& address() const { return address_; }

 private:
  HttpServer(std::string address, Metrics& metrics) : address_(std::move(address)), metrics_(metrics) {}
  static int HandleMetrics(mg_connection* conn, void* self);
  static int HandleHealthz(mg_connection* conn, void* self);
  static int HandleReadyz(mg_connection* conn, void* self);

  std::string address_;
  Metrics& metrics_;
  mg_context* ctx_ = nullptr;  // owned; mg_stop() in the destructor
};

}  // namespace outboxd
