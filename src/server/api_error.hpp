// Errors a request gets back: an HTTP status and an OpenAI error object,
//   {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
// (type "invalid_request_error" for the client's mistakes, "authentication_error" for a missing
// or wrong key, "server_error" for ours; param names the request field at fault, or null).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/error.hpp"

namespace moeflux::server {

class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::string param = "",
           std::string type = "invalid_request_error", std::string code = "")
      : Error(message),
        status_(status),
        param_(std::move(param)),
        type_(std::move(type)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string param_, type_, code_;
};

// 400 naming the field: "<param>: <what>".
[[noreturn]] inline void bad_field(const std::string& param, const std::string& what) {
  throw ApiError(400, param + ": " + what, param);
}

inline nlohmann::json error_body(const std::string& message, const std::string& type,
                                 const std::string& param = "", const std::string& code = "") {
  nlohmann::json e = {{"message", message},
                      {"type", type},
                      {"param", param.empty() ? nlohmann::json() : nlohmann::json(param)},
                      {"code", code.empty() ? nlohmann::json() : nlohmann::json(code)}};
  return {{"error", e}};
}

inline nlohmann::json error_body(const ApiError& e) {
  return error_body(e.what(), e.type(), e.param(), e.code());
}

}  // namespace moeflux::server
