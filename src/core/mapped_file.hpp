// A read-only memory mapping of a whole file.
//
// Invariants:
//   - size() == the file's size at open() time; data() == nullptr iff size() == 0 (an empty file
//     is mapped as nothing, since mmap of length 0 is an error);
//   - the mapping is MAP_PRIVATE, PROT_READ: the bytes can't be written through it. If another
//     process truncates the file while it is mapped, touching pages past the new end raises
//     SIGBUS; we treat files under a model directory as immutable while open.
//   - move-only; a moved-from MappedFile is empty (data() == nullptr, size() == 0).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moeflux {

class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // Maps `path` read-only. Throws moeflux::Error("<path>: <strerror>") if it can't be opened,
  // stat'ed or mapped, and Error("<path>: not a regular file") for directories, FIFOs, etc.
  static MappedFile open(const std::string& path);

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // madvise hints for the whole mapping; no-ops on an empty file. Failures are ignored (a hint).
  void advise_sequential() const;
  void advise_random() const;
  void advise_willneed() const;

 private:
  void reset() noexcept;

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace moeflux
