// Helpers of the HTTP layer (http_server.cpp, http_generate.cpp).
#pragma once

#include "server/api_error.hpp"

namespace httplib {
struct Response;
}

namespace moeflux::server {

// The OpenAI error object of `e`, with its status.
void send_error(httplib::Response& res, const ApiError& e);

}  // namespace moeflux::server
