// libFuzzer target: SafetensorsFile::open on arbitrary bytes.
//
// The bytes go into one reusable memfd, opened through /proc/self/fd/N so the real open path
// (open + fstat + mmap) runs. Any input must either open cleanly, after which every tensor's
// [data, data + nbytes) is readable and consistent with its dtype and shape, or throw
// moeflux::Error with a one-line message naming the file. Anything else (crash, sanitizer
// report, other exception, assertion) is a finding.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.hpp"
#include "formats/safetensors.hpp"

namespace {

int memfd() {
  static const int fd = [] {
    const int f = memfd_create("safetensors_fuzz", MFD_CLOEXEC);
    if (f < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return f;
  }();
  return fd;
}

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "safetensors_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd();
  if (ftruncate(fd, 0) != 0) finding("ftruncate failed");
  for (size_t done = 0; done < size;) {
    const ssize_t n = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) finding("pwrite failed");
    done += static_cast<size_t>(n);
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);

  try {
    const moeflux::SafetensorsFile f = moeflux::SafetensorsFile::open(path);
    const uint8_t* const begin = f.mapped().data();
    const uint8_t* const end = begin + f.mapped().size();
    volatile uint8_t sink = 0;
    for (const moeflux::TensorInfo& t : f.tensors()) {
      if (t.nbytes != t.numel() * moeflux::dtype_size(t.dtype)) finding("nbytes != numel * size");
      if (t.data < begin || t.data > end || t.nbytes > static_cast<size_t>(end - t.data)) {
        finding("tensor bytes outside the mapping");
      }
      if (f.find(t.name) != &t) finding("find() disagrees with tensors()");
      uint8_t acc = 0;
      for (size_t i = 0; i < t.nbytes; ++i) acc ^= t.data[i];  // ASan checks every byte
      sink = sink ^ acc;
    }
    (void)sink;
    (void)f.metadata().size();
  } catch (const moeflux::Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(path, 0) != 0) finding("error message does not start with the file name");
    if (msg.find('\n') != std::string::npos) finding("multi-line error message");
  }
  return 0;
}
