#include "interrupt.hpp"

#include <csignal>

namespace moeflux::tool {

namespace {

volatile std::sig_atomic_t g_interrupted = 0;

// Async-signal-safe: a flag store, or signal() + raise() for the second one.
void on_interrupt(int sig) {
  if (g_interrupted) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_interrupted = 1;
}

}  // namespace

void install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: blocked reads return EINTR
  sigaction(SIGINT, &sa, nullptr);
}

bool interrupted() {
  return g_interrupted != 0;
}

void clear_interrupt() {
  g_interrupted = 0;
}

}  // namespace moeflux::tool
