// Generated text streamed through stop strings: pieces go in; what cannot be the start of a stop
// string comes out at once, the rest is held until it is told apart. A complete stop string ends
// the stream: the text before it is the last output, the string and what follows never are.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moeflux {

class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops);  // empty strings are dropped

  // Appends `piece` and moves the text that is safe to emit to `out` (appended); `final`: no
  // more text follows, so nothing is held. Returns true when a stop string completed (the
  // filter must not be used after that).
  bool push(std::string_view piece, bool final, std::string& out);

 private:
  std::vector<std::string> stops_;
  std::string held_;  // decoded, not yet emitted (may be the start of a stop string)
};

}  // namespace moeflux
