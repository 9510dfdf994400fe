// Strict reads of numbers from untrusted JSON (package manifests, configs): the JSON type must
// match and the value must fit, else moeflux::Error naming the field. nlohmann's get<int>() would
// instead convert 1e300 or -1 into some integer (undefined behaviour for out-of-range floats).
#pragma once

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.hpp"

namespace moeflux {

// An integer in [lo, hi]; `what` names the field in errors ("<file>: key 'x'").
inline int64_t json_int(const nlohmann::json& v, const std::string& what, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) fail(what + " is not an integer");
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (hi < 0 || u > static_cast<uint64_t>(hi)) fail(what + " is out of range");
    return static_cast<int64_t>(u);
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo) fail(what + " is " + std::to_string(x) + ", below the minimum " + std::to_string(lo));
  if (x > hi) fail(what + " is out of range");
  return x;
}

// A non-negative integer at most hi.
inline uint64_t json_uint(const nlohmann::json& v, const std::string& what, uint64_t hi) {
  if (!v.is_number_integer()) fail(what + " is not an integer");
  if (!v.is_number_unsigned() && v.get<int64_t>() < 0) fail(what + " is negative");
  const uint64_t u = v.get<uint64_t>();
  if (u > hi) fail(what + " is out of range");
  return u;
}

// A finite number. transformers 5 writes non-finite floats as {"__float__": "NaN"} (or
// "Infinity", "-Infinity"); those are refused as not finite.
inline double json_finite(const nlohmann::json& v, const std::string& what) {
  if (v.is_object() && v.size() == 1 && v.contains("__float__"))
    fail(what + " is not finite (" + printable(v.at("__float__").dump()) + ")");
  if (!v.is_number()) fail(what + " is not a number");
  const double x = v.get<double>();
  if (!std::isfinite(x)) fail(what + " is not finite");
  return x;
}

}  // namespace moeflux
