#!/usr/bin/env bash
# Builds `moeflux` and its test binary for the GPU host and packs them with the shared libraries
# they need into .devbuild/ (xz keeps ICU's data under the device tool's 64 MiB limit). Carry
# ".devbuild" (and ".peer" for peer.sh) to the device and run the scripts beside this one there.
#   bench/device/pack.sh            CPU build (CUDA off): moeflux-bundle.tar.xz, for peer.sh / check.sh
#   CUDA=1 bench/device/pack.sh     CUDA build for sm_90: moeflux-cuda-bundle.tar.xz, for cuda.sh
#   BUILD_DIR=dir ... pack.sh       pack an existing build directory instead of building one
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ "${CUDA:-0}" == 1 ]]; then
  build=${BUILD_DIR:-build-device-cuda}
  bundle=moeflux-cuda-bundle.tar.xz
  flags=(-DMOEFLUX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90)
else
  build=${BUILD_DIR:-build-device}
  bundle=moeflux-bundle.tar.xz
  flags=(-DMOEFLUX_CUDA=OFF)
fi
if [[ -z "${BUILD_DIR:-}" ]]; then
  # The tests' fixture and binary paths are compiled in: the device scripts recreate them.
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEFLUX_TESTS=ON "${flags[@]}" \
    -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >/dev/null
fi
extra=(); [[ "${CUDA:-0}" == 1 ]] && extra=(moeflux_pcie_bench)
ninja -C "$build" -j "$(nproc)" moeflux moeflux_tests "${extra[@]}"
mkdir -p .devbuild && rm -rf .devbuild/stage && mkdir -p .devbuild/stage/lib
cp "$build/moeflux" "$build/tests/moeflux_tests" .devbuild/stage/
[[ "${CUDA:-0}" == 1 ]] && cp "$build/moeflux_pcie_bench" .devbuild/stage/
echo "$PWD" > .devbuild/stage/source_dir
(cd "$build" && pwd) > .devbuild/stage/build_dir
for lib in $(ldd "$build/moeflux" "$build/tests/moeflux_tests" | awk '/=> \// {print $3}' | sort -u); do
  case $(basename "$lib") in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libcuda.so*) ;;  # the host's own
    *) cp -L "$lib" .devbuild/stage/lib/ ;;
  esac
done
tar cJf ".devbuild/$bundle" -C .devbuild/stage .
rm -rf .devbuild/stage
ls -la ".devbuild/$bundle"
