// core/output_file.hpp: regular files replaced atomically, FIFOs and devices written in place,
// symbolic links followed, bad paths refused before any work.
#include "core/output_file.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

// Names in `dir` other than `keep`: a temporary file left behind would show here.
std::vector<std::string> other_entries(const TempDir& dir, const std::vector<std::string>& keep) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    const std::string name = e.path().filename().string();
    if (std::find(keep.begin(), keep.end(), name) == keep.end()) out.push_back(name);
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(OutputFile, NewAndExistingRegularFiles) {
  TempDir t;
  write_output_file(t / "a.txt", {"one", "two"});
  EXPECT_EQ(read_text(t / "a.txt"), "onetwo");
  ::chmod((t / "a.txt").c_str(), 0640);
  write_output_file(t / "a.txt", {"three"});
  EXPECT_EQ(read_text(t / "a.txt"), "three");
  struct stat st {};
  ASSERT_EQ(::stat((t / "a.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);  // the permission bits survive the rename
  EXPECT_TRUE(other_entries(t, {"a.txt"}).empty());
}

TEST(OutputFile, SymlinkIsFollowedAndStays) {
  TempDir t;
  fs::create_directories(t / "real");
  std::ofstream(t / "real/target.json") << "old";
  fs::create_symlink("real/target.json", t / "link.json");  // relative to the link's directory
  write_output_file(t / "link.json", {"new"});
  EXPECT_TRUE(fs::is_symlink(t / "link.json"));
  EXPECT_EQ(read_text(t / "real/target.json"), "new");
  // A dangling link: its target is created, the link kept.
  fs::create_symlink(t / "real/fresh.json", t / "dangling.json");
  write_output_file(t / "dangling.json", {"fresh"});
  EXPECT_TRUE(fs::is_symlink(t / "dangling.json"));
  EXPECT_EQ(read_text(t / "real/fresh.json"), "fresh");
}

TEST(OutputFile, FifoIsWrittenInPlace) {
  TempDir t;
  ASSERT_EQ(::mkfifo((t / "pipe").c_str(), 0600), 0);
  // Opened read-write here, so the writer's open does not wait for a reader.
  const int fd = ::open((t / "pipe").c_str(), O_RDWR | O_NONBLOCK);
  ASSERT_GE(fd, 0);
  write_output_file(t / "pipe", {"through ", "the pipe"});
  char buf[64] = {};
  const ssize_t n = ::read(fd, buf, sizeof buf);
  ::close(fd);
  EXPECT_EQ(std::string(buf, n > 0 ? size_t(n) : 0), "through the pipe");
  struct stat st {};
  ASSERT_EQ(::lstat((t / "pipe").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_TRUE(other_entries(t, {"pipe"}).empty());
}

TEST(OutputFile, CharacterDeviceIsWrittenInPlace) {
  check_output_path("/dev/null", "--json");
  write_output_file("/dev/null", {"discarded"}, "--json");
  struct stat st {};
  ASSERT_EQ(::lstat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "/dev/null was replaced";
}

TEST(OutputFile, BadPathsAreRefusedBeforeWriting) {
  TempDir t;
  fs::create_directories(t / "dir");
  std::string e = error_of([&] { check_output_path(t / "missing/o.npy", "--out"); });
  EXPECT_NE(e.find("--out: cannot write " + t / "missing/o.npy"), std::string::npos) << e;
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  e = error_of([&] { check_output_path(t / "dir", "--json"); });
  EXPECT_NE(e.find("is a directory"), std::string::npos) << e;
  e = error_of([&] { write_output_file(t / "dir", {"x"}, "--json"); });
  EXPECT_NE(e.find("is a directory"), std::string::npos) << e;
  std::ofstream(t / "file") << "x";
  e = error_of([&] { check_output_path(t / "file/o.json", "--json"); });
  EXPECT_NE(e.find("not a directory"), std::string::npos) << e;
  e = error_of([&] { write_output_file(t / "missing/o.npy", {"x"}, "--out"); });
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  fs::create_symlink("loop", t / "loop");
  e = error_of([&] { check_output_path(t / "loop", "--json"); });
  EXPECT_NE(e.find("symbolic links"), std::string::npos) << e;
  EXPECT_TRUE(error_of([&] { check_output_path(t / "new.json", "--json"); }).empty());
  EXPECT_FALSE(fs::exists(t / "new.json"));  // checking creates nothing
}

TEST(OutputFile, ReadOnlyDirectoryIsRefusedUnlessRoot) {
  if (::geteuid() == 0) GTEST_SKIP() << "root may write anywhere";
  TempDir t;
  fs::create_directories(t / "ro");
  std::ofstream(t / "ro/old.json") << "old";
  ::chmod((t / "ro").c_str(), 0555);
  const std::string e = error_of([&] { check_output_path(t / "ro/old.json", "--json"); });
  EXPECT_NE(e.find("not writable"), std::string::npos) << e;
  EXPECT_FALSE(error_of([&] { write_output_file(t / "ro/old.json", {"new"}); }).empty());
  EXPECT_EQ(read_text(t / "ro/old.json"), "old");
  ::chmod((t / "ro").c_str(), 0755);
}

}  // namespace
}  // namespace moeflux::test
