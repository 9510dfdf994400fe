#include "runtime/stop_strings.hpp"

#include <algorithm>

namespace moeflux {

namespace {

// Length of the longest suffix of `text` that is a proper prefix of one of `stops`: text that
// may still become a stop string and must be held back.
size_t partial_stop_suffix(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops)
    for (size_t n = std::min(text.size(), s.size() - 1); n > hold; --n)
      if (text.substr(text.size() - n) == std::string_view(s).substr(0, n)) {
        hold = n;
        break;
      }
  return hold;
}

// Earliest occurrence of any stop string in `text`, npos if none.
size_t find_stop(std::string_view text, const std::vector<std::string>& stops) {
  size_t best = std::string_view::npos;
  for (const auto& s : stops) best = std::min(best, text.find(s));
  return best;
}

}  // namespace

StopStringFilter::StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

bool StopStringFilter::push(std::string_view piece, bool final, std::string& out) {
  held_ += piece;
  const size_t at = find_stop(held_, stops_);
  if (at != std::string::npos) {
    out.append(held_, 0, at);
    held_.clear();
    return true;
  }
  const size_t keep = final ? 0 : partial_stop_suffix(held_, stops_);
  out.append(held_, 0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return false;
}

}  // namespace moeflux
