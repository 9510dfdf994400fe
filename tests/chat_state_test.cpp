// `moeflux chat` /save FILE and /load FILE: a conversation saved, then loaded in another process,
// goes on exactly as it would have without leaving (greedy sampling, same replies); a bad file is
// reported and the conversation stays as it was.
#include <gtest/gtest.h>

#include "test_util.hpp"

namespace moeflux::test {
namespace {

TEST(ChatState, SaveAndLoadContinueTheConversationExactly) {
  TempDir tmp;
  const std::string model = fixture_dir("../../models/moeflux-tiny-kjv");
  const std::vector<std::string> args = {"chat", "-m", model,       "--temp", "0",
                                         "-n",   "12", "--threads", "2"};
  const std::string state = tmp / "conv.state";
  // One process: a turn, /save, another turn.
  const CommandResult one =
      run_moeflux_with(args, "", "In the beginning\n/save " + state + "\nAnd the earth\n");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.err.find("[chat] saved "), std::string::npos) << one.err;
  ASSERT_TRUE(fs::exists(state));
  // Another process: /load, the same second turn.
  const CommandResult two = run_moeflux_with(args, "", "/load " + state + "\nAnd the earth\n");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_NE(two.err.find("[chat] loaded "), std::string::npos) << two.err;
  // The second reply is the last line of each output.
  auto last_line = [](std::string s) {
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s.substr(s.rfind('\n') == std::string::npos ? 0 : s.rfind('\n') + 1);
  };
  EXPECT_EQ(last_line(two.out), last_line(one.out));
  EXPECT_FALSE(last_line(two.out).empty());

  // A file that is no state: reported, the conversation unchanged, the chat goes on.
  std::ofstream(tmp / "junk") << "junk";
  const CommandResult bad = run_moeflux_with(
      args, "", "/load " + (tmp / "junk") + "\n/load " + (tmp / "none") + "\nIn the beginning\n");
  ASSERT_EQ(bad.exit_code, 0) << bad.err;
  EXPECT_NE(bad.err.find("session state"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("none"), std::string::npos) << bad.err;
  EXPECT_EQ(last_line(bad.out), last_line(run_moeflux_with(args, "", "In the beginning\n").out));
}

}  // namespace
}  // namespace moeflux::test
