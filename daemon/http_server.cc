#include "daemon/http_server.h"

#include <civetweb.h>

#include <cstring>
#include <string_view>

#include "common/logging.h"

namespace outboxd {

namespace {

// Writes a whole response; a HEAD request gets the headers only.
int Respond(mg_connection* conn, int status, const char* content_type, const std::string& body) {
  const mg_request_info* request = mg_get_request_info(conn);
  const std::string_view method = request->request_method ? request->request_method : "";
  if (method != "GET" && method != "HEAD") {
    mg_response_header_start(conn, 405);
    mg_response_header_add(conn, "Allow", "GET, HEAD", -1);
    mg_response_header_add(conn, "Content-Length", "0", -1);
    mg_response_header_send(conn);
    return 405;
  }
  mg_response_header_start(conn, status);
  mg_response_header_add(conn, "Content-Type", content_type, -1);
  mg_response_header_add(conn, "Cache-Control", "no-store", -1);
  const std::string length = std::to_string(body.size());
  mg_response_header_add(conn, "Content-Length", length.c_str(), -1);
  mg_response_header_send(conn);
  if (method == "GET") mg_write(conn, body.data(), body.size());
  return status;
}

// While Start() runs on a thread, civetweb's messages go into its error
// instead of the log: they say why the address could not be bound.
thread_local std::string* start_messages = nullptr;

int LogMessage(const mg_connection*, const char* message) {
  if (start_messages != nullptr) {
    if (!start_messages->empty()) *start_messages += "; ";
    *start_messages += message;
  } else {
    Logger("http")->warn("{}", message);
  }
  return 1;  // handled: civetweb writes nothing itself
}

}  // namespace

int HttpServer::HandleMetrics(mg_connection* conn, void* self) {
  const std::string body = static_cast<HttpServer*>(self)->metrics_.Serialize();
  return Respond(conn, 200, "text/plain; version=0.0.4; charset=utf-8", body);
}

int HttpServer::HandleHealthz(mg_connection* conn, void* self) {
  const Metrics::Report r = static_cast<HttpServer*>(self)->metrics_.Liveness();
  return Respond(conn, r.ok ? 200 : 503, "text/plain; charset=utf-8", r.body);
}

int HttpServer::HandleReadyz(mg_connection* conn, void* self) {
  const Metrics::Report r = static_cast<HttpServer*>(self)->metrics_.Readiness();
  return Respond(conn, r.ok ? 200 : 503, "text/plain; charset=utf-8", r.body);
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& address, Metrics& metrics) {
  std::unique_ptr<HttpServer> server(new HttpServer(address, metrics));
  mg_init_library(0);
  const char* options[] = {
      "listening_ports",
      address.c_str(),
      "num_threads",
      "4",  // scrapes and probes are short
      "request_timeout_ms",
      "10000",
      "enable_keep_alive",
      "no",  // a lingering client never holds a worker
      nullptr,
  };
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof callbacks);
  callbacks.log_message = &LogMessage;
  mg_init_data init;
  std::memset(&init, 0, sizeof init);
  init.callbacks = &callbacks;
  init.user_data = server.get();
  init.configuration_options = options;
  char error_text[256] = "";
  unsigned error_code = 0;
  mg_error_data error;
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof error_text;
  std::string messages;
  start_messages = &messages;
  server->ctx_ = mg_start2(&init, &error);
  start_messages = nullptr;
  if (server->ctx_ == nullptr) {
    mg_exit_library();
    if (messages.empty()) messages = error_text;
    return Status::Fatal("[http] listen = \"" + address + "\": could not listen" +
                         (messages.empty() ? std::string() : ": " + messages));
  }
  if (!messages.empty()) Logger("http")->warn("{}", messages);
  mg_set_request_handler(server->ctx_, "/metrics$", &HttpServer::HandleMetrics, server.get());
  mg_set_request_handler(server->ctx_, "/healthz$", &HttpServer::HandleHealthz, server.get());
  mg_set_request_handler(server->ctx_, "/readyz$", &HttpServer::HandleReadyz, server.get());
  Logger("http")->info("listening on {} (/metrics, /healthz, /readyz)", address);
  return server;
}

HttpServer::~HttpServer() {
  if (ctx_ != nullptr) {
    mg_stop(ctx_);
    mg_exit_library();
  }
}

}  // namespace outboxd
