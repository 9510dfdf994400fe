#!/usr/bin/env bash
# Builds the `moeflux` binary for the GPU host's CPU benchmarks (CUDA off, libstdc++ static) and
# its test binary, and packs them with the shared libraries it needs into .devbuild/moeflux-bundle.tar.xz (xz keeps
# ICU's data under the device tool's 64 MiB limit). Carry ".devbuild" and ".peer" to the device
# and run bench/device/peer.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The tests' fixture and binary paths are compiled in: peer.sh recreates them on the device.
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEFLUX_CUDA=OFF -DMOEFLUX_TESTS=ON \
  -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >/dev/null
ninja -C build-device -j "$(nproc)" moeflux moeflux_tests
rm -rf .devbuild && mkdir -p .devbuild/stage/lib
cp build-device/moeflux build-device/tests/moeflux_tests .devbuild/stage/
echo "$PWD" > .devbuild/stage/source_dir
for lib in $(ldd build-device/moeflux | awk '/=> \// {print $3}'); do
  case $(basename "$lib") in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*) ;;  # the host's own
    *) cp -L "$lib" .devbuild/stage/lib/ ;;
  esac
done
tar cJf .devbuild/moeflux-bundle.tar.xz -C .devbuild/stage .
rm -rf .devbuild/stage
ls -la .devbuild/moeflux-bundle.tar.xz
