#include "core/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

#include "core/error.hpp"

namespace moeflux {

MappedFile::~MappedFile() {
  reset();
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

void MappedFile::reset() noexcept {
  if (data_ != nullptr) munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

MappedFile MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno(path);
  // The mapping keeps its own reference to the file, so the descriptor is closed on every path.
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};

  struct stat st;
  if (fstat(fd, &st) != 0) throw_errno(path);
  if (!S_ISREG(st.st_mode)) fail(path + ": not a regular file");

  MappedFile m;
  m.path_ = path;
  if (st.st_size == 0) return m;  // empty: data() == nullptr, size() == 0
  const size_t size = static_cast<size_t>(st.st_size);
  void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) throw_errno(path);
  m.data_ = static_cast<const uint8_t*>(p);
  m.size_ = size;
  return m;
}

void MappedFile::advise_sequential() const {
  if (data_ != nullptr) madvise(const_cast<uint8_t*>(data_), size_, MADV_SEQUENTIAL);
}

void MappedFile::advise_random() const {
  if (data_ != nullptr) madvise(const_cast<uint8_t*>(data_), size_, MADV_RANDOM);
}

void MappedFile::advise_willneed() const {
  if (data_ != nullptr) madvise(const_cast<uint8_t*>(data_), size_, MADV_WILLNEED);
}

}  // namespace moeflux
