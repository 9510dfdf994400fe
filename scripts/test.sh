#!/usr/bin/env bash
# The test command (README, CI): installs build dependencies, builds, runs the whole suite,
# then the same suite under AddressSanitizer + UndefinedBehaviorSanitizer, then the concurrency
# tests (engine shared by sessions on several threads, thread pool, readers) under
# ThreadSanitizer.
#   scripts/test.sh                   all three builds
#   SKIP_SANITIZE=1 scripts/test.sh   the release build only
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh

jobs=$(nproc)
echo "== release build (build/) ==" >&2
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

if [[ "${SKIP_SANITIZE:-0}" != 1 ]]; then
  echo "== ASan + UBSan build (build-sanitize/) ==" >&2
  cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEFLUX_SANITIZE=ON \
    -DMOEFLUX_CUDA=OFF >/dev/null
  ninja -C build-sanitize -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-sanitize --output-on-failure -j "$jobs"
fi

if [[ "${SKIP_SANITIZE:-0}" != 1 ]]; then
  echo "== ThreadSanitizer build (build-tsan/): concurrency tests ==" >&2
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEFLUX_TSAN=ON \
    -DMOEFLUX_CUDA=OFF >/dev/null
  ninja -C build-tsan -j "$jobs" moeflux moeflux_tests
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 build-tsan/tests/moeflux_tests \
    --gtest_filter='*EngineTest*:ThreadPool*:Backends/ReaderTest.*:*Streaming*'
fi
