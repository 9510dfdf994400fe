// Ctrl-C for the commands that generate (run, chat).
//
// The first SIGINT only sets a flag (the handler does nothing else): the generation loop polls it
// before each token and stops cleanly (GenerateOptions::stop_requested). A second SIGINT while
// the flag is still set (the command did not get to it, e.g. in a long prompt evaluation) ends
// the process at once, by the default action. The handler is installed without SA_RESTART, so a
// read of standard input blocked in `chat` returns EINTR and the prompt loop sees the flag.
#pragma once

namespace moeflux::tool {

void install_interrupt_handler();
bool interrupted();      // a SIGINT arrived since the last clear_interrupt()
void clear_interrupt();  // handled: the next SIGINT is a first one again

// Exit status of a command ended by Ctrl-C (128 + SIGINT, as a shell reports it).
constexpr int kInterruptedExit = 130;

}  // namespace moeflux::tool
