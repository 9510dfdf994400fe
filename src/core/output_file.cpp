#include "core/output_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"

namespace moeflux {

namespace {

namespace fs = std::filesystem;

enum class Kind { Missing, Regular, Directory, Other };

// What a path finally names, symbolic links followed (a dangling link names its missing target).
struct Target {
  std::string path;  // the link-free path to open, create or rename over
  Kind kind = Kind::Missing;
  mode_t mode = 0;  // permission bits of an existing file
};

[[noreturn]] void refuse(const std::string& what, const std::string& path, const std::string& why) {
  fail((what.empty() ? path : what + ": cannot write " + path) + ": " + why);
}

std::string errno_text() {
  return std::strerror(errno);
}

// The directory a new file `path` would be created in ("." for a bare name).
std::string parent_dir(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

Target resolve(const std::string& path, const std::string& what) {
  if (path.empty()) refuse(what, path, "empty path");
  Target t{path};
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st {};
    if (::lstat(t.path.c_str(), &st) != 0) {
      if (errno == ENOTDIR) refuse(what, path, parent_dir(t.path) + " is not a directory");
      if (errno != ENOENT) refuse(what, path, errno_text());
      if (!t.path.empty() && t.path.back() == '/') refuse(what, path, "names a directory");
      t.kind = Kind::Missing;
      return t;
    }
    if (!S_ISLNK(st.st_mode)) {
      t.kind = S_ISREG(st.st_mode)   ? Kind::Regular
               : S_ISDIR(st.st_mode) ? Kind::Directory
                                     : Kind::Other;
      t.mode = st.st_mode & 07777;
      return t;
    }
    std::error_code ec;
    const fs::path link = fs::read_symlink(t.path, ec);
    if (ec) refuse(what, path, ec.message());
    t.path = link.is_absolute() ? link.string() : (fs::path(parent_dir(t.path)) / link).string();
  }
  refuse(what, path, "too many levels of symbolic links");
}

// The checks of check_output_path on a resolved target.
void check_target(const Target& t, const std::string& path, const std::string& what) {
  switch (t.kind) {
    case Kind::Directory:
      refuse(what, path, "is a directory");
    case Kind::Other:
      if (::access(t.path.c_str(), W_OK) != 0) refuse(what, path, errno_text());
      return;
    case Kind::Regular:
      if (::access(t.path.c_str(), W_OK) != 0) refuse(what, path, errno_text());
      break;
    case Kind::Missing:
      break;
  }
  const std::string dir = parent_dir(t.path);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) refuse(what, path, "directory " + dir + " does not exist");
    refuse(what, path, dir + ": " + errno_text());
  }
  if (!S_ISDIR(st.st_mode)) refuse(what, path, dir + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    refuse(what, path, "directory " + dir + " is not writable (" + errno_text() + ")");
}

// Writes every part to `fd`; false (errno set) on failure.
bool write_all(int fd, std::initializer_list<std::string_view> parts) {
  for (std::string_view p : parts) {
    while (!p.empty()) {
      const ssize_t n = ::write(fd, p.data(), p.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      p.remove_prefix(static_cast<size_t>(n));
    }
  }
  return true;
}

void write_in_place(const Target& t, std::initializer_list<std::string_view> parts,
                    const std::string& path, const std::string& what) {
  const int fd = ::open(t.path.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) refuse(what, path, errno_text());
  std::string why;
  if (!write_all(fd, parts)) why = errno_text();
  if (::close(fd) != 0 && why.empty()) why = errno_text();
  if (!why.empty()) refuse(what, path, why);
}

// A temporary name beside `target` that no other writer uses: .<name>.partial-<pid>-<n>.
std::string temp_name(const std::string& target) {
  static std::atomic<unsigned> counter{0};
  const fs::path p(target);
  return (fs::path(parent_dir(target)) /
          ("." + p.filename().string() + ".partial-" + std::to_string(::getpid()) + "-" +
           std::to_string(counter.fetch_add(1))))
      .string();
}

void write_by_rename(const Target& t, std::initializer_list<std::string_view> parts,
                     const std::string& path, const std::string& what) {
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    tmp = temp_name(t.path);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && (errno != EEXIST || attempt > 100)) {
      if (errno == ENOENT)
        refuse(what, path, "directory " + parent_dir(t.path) + " does not exist");
      refuse(what, path, tmp + ": " + errno_text());
    }
  }
  std::string why;  // the first failure
  if (t.kind == Kind::Regular && ::fchmod(fd, t.mode) != 0) why = errno_text();
  if (why.empty() && !write_all(fd, parts)) why = errno_text();
  if (why.empty() && ::fsync(fd) != 0) why = errno_text();
  if (::close(fd) != 0 && why.empty()) why = errno_text();
  if (why.empty() && ::rename(tmp.c_str(), t.path.c_str()) != 0) why = errno_text();
  if (!why.empty()) {
    ::unlink(tmp.c_str());
    refuse(what, path, why);
  }
}

}  // namespace

void check_output_path(const std::string& path, const std::string& what) {
  check_target(resolve(path, what), path, what);
}

void write_output_file(const std::string& path, std::initializer_list<std::string_view> parts,
                       const std::string& what) {
  const Target t = resolve(path, what);
  switch (t.kind) {
    case Kind::Directory:
      refuse(what, path, "is a directory");
    case Kind::Other:
      return write_in_place(t, parts, path, what);
    case Kind::Regular:
    case Kind::Missing:
      return write_by_rename(t, parts, path, what);
  }
}

}  // namespace moeflux
