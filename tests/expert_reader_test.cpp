// The asynchronous expert readers (threads and io_uring backends, page cache and O_DIRECT)
// against the bytes of the layer files read independently, plus their error paths: truncated
// files, injected faults, environments that refuse io_uring or O_DIRECT, and destruction with
// reads in flight. Combinations the environment refuses are skipped with the reason printed.
#include "experts/expert_reader.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "experts/fault_injecting_reader.hpp"
#include "formats/package.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

constexpr uint8_t kPoison = 0xA5;

// One package converted from a committed fixture, shared (read-only) by the tests.
const std::string& shared_package() {
  static TempDir dir;
  static const std::string pkg = [] {
    const std::string out = dir / "pkg";
    const CommandResult r =
        run_moeflux({"convert", fixture_dir("qwen3_moe_sharded") + "/hf", out, "-q"});
    if (r.exit_code != 0) {
      ADD_FAILURE() << "convert failed: " << r.err;
      std::abort();
    }
    return out;
  }();
  return pkg;
}

// A private, writable copy of the shared package.
std::string copy_package(const TempDir& tmp) {
  const std::string dst = tmp / "pkg";
  fs::copy(shared_package(), dst, fs::copy_options::recursive);
  return dst;
}

std::vector<int> moe_layers(const Package& pkg) {
  std::vector<int> v;
  for (int l = 0; l < pkg.config().num_layers; ++l)
    if (pkg.config().layer_is_moe[l]) v.push_back(l);
  return v;
}

// The layer files read with std::ifstream, independently of the readers.
class Expected {
 public:
  explicit Expected(const Package& pkg) : rb_(pkg.manifest().experts.record_bytes) {
    for (int l : moe_layers(pkg)) files_[l] = read_text(pkg.expert_file_path(l));
  }
  const uint8_t* record(int layer, int expert) const {
    const std::string& f = files_.at(layer);
    EXPECT_LE((expert + 1) * rb_, f.size());
    return reinterpret_cast<const uint8_t*>(f.data()) + expert * rb_;
  }

 private:
  size_t rb_;
  std::map<int, std::string> files_;
};

// Ops with their own 4096-aligned destinations, poisoned before every read.
class Ops {
 public:
  Ops(size_t n, size_t record_bytes) : rb_(record_bytes) {
    for (size_t i = 0; i < n; ++i) {
      bufs_.emplace_back(rb_, kExpertAlignment);
      ops_.push_back(std::make_unique<ReadOp>());
      ops_.back()->dst = bufs_.back().data();
    }
  }
  ReadOp& operator[](size_t i) { return *ops_[i]; }
  size_t size() const { return ops_.size(); }
  void set(size_t i, int layer, int expert) {
    ops_[i]->layer = layer;
    ops_[i]->expert = expert;
    std::memset(ops_[i]->dst, kPoison, rb_);
  }
  std::vector<ReadOp*> ptrs(size_t begin = 0, size_t end = SIZE_MAX) {
    std::vector<ReadOp*> v;
    for (size_t i = begin; i < std::min(end, ops_.size()); ++i) v.push_back(ops_[i].get());
    return v;
  }

 private:
  size_t rb_;
  std::vector<AlignedBuffer> bufs_;
  std::vector<std::unique_ptr<ReadOp>> ops_;
};

::testing::AssertionResult same_record(const ReadOp& op, const Expected& exp, size_t rb) {
  const uint8_t* want = exp.record(op.layer, op.expert);
  for (size_t i = 0; i < rb; ++i)
    if (op.dst[i] != want[i])
      return ::testing::AssertionFailure()
             << "layer " << op.layer << " expert " << op.expert << ": byte " << i << " is "
             << int(op.dst[i]) << ", file has " << int(want[i]);
  return ::testing::AssertionSuccess();
}

// The error text of a failed wait (empty if it succeeded).
std::string wait_error(ExpertReader& r, ReadOp& op) {
  try {
    r.wait(op);
  } catch (const Error& e) {
    EXPECT_EQ(op.state.load(), ReadOp::Failed);
    EXPECT_EQ(op.error, e.what());
    return e.what();
  }
  EXPECT_EQ(op.state.load(), ReadOp::Done);
  return "";
}

struct Case {
  IoBackend backend;
  IoMode mode;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string s =
      std::string(io_backend_name(info.param.backend)) + "_" + io_mode_name(info.param.mode);
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

// A reader for the case, or nullptr with *why set where the environment refuses the backend or
// the mode (the only errors tolerated here).
std::unique_ptr<ExpertReader> try_open(const Package& pkg, const Case& c, std::string* why,
                                       size_t threads = 4, unsigned depth = 16) {
  ReaderOptions o;
  o.backend = c.backend;
  o.mode = c.mode;
  o.threads = threads;
  o.depth = depth;
  try {
    return make_expert_reader(pkg, o);
  } catch (const Error& e) {
    const std::string m = e.what();
    if (m.find("O_DIRECT not supported") == std::string::npos &&
        m.find("io_uring unavailable") == std::string::npos)
      throw;
    *why = "environment refuses " + std::string(io_backend_name(c.backend)) + "/" +
           io_mode_name(c.mode) + ": " + m;
    return nullptr;
  }
}

#define OPEN_OR_SKIP(var, pkg, ...)                                            \
  std::string var##_why;                                                       \
  auto var = try_open(pkg, GetParam(), &var##_why __VA_OPT__(, ) __VA_ARGS__); \
  if (!var) {                                                                  \
    std::printf("[  SKIPPED ] %s\n", var##_why.c_str());                       \
    GTEST_SKIP() << var##_why;                                                 \
  }

class ReaderTest : public ::testing::TestWithParam<Case> {};

TEST_P(ReaderTest, ReadsEveryRecordByteExact) {
  const Package pkg = Package::open(shared_package());
  const Expected exp(pkg);
  OPEN_OR_SKIP(reader, pkg);
  const size_t rb = reader->record_bytes();
  ASSERT_EQ(rb, pkg.manifest().experts.record_bytes);
  const auto layers = moe_layers(pkg);
  const int ne = pkg.config().num_experts;
  Ops ops(layers.size() * ne, rb);
  for (size_t li = 0; li < layers.size(); ++li)
    for (int e = 0; e < ne; ++e) ops.set(li * ne + e, layers[li], e);
  reader->submit(ops.ptrs());
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSERT_EQ(wait_error(*reader, ops[i]), "");
    EXPECT_TRUE(done(ops[i]));
    EXPECT_TRUE(same_record(ops[i], exp, rb));
  }
  const ReaderStats s = reader->stats();
  EXPECT_EQ(s.reads, ops.size());
  EXPECT_EQ(s.bytes, ops.size() * rb);
  EXPECT_GT(s.busy_seconds, 0);
  EXPECT_NE(std::string(reader->describe()), "");
}

TEST_P(ReaderTest, WaitsInReverseOrderWithOneReadInFlight) {
  const Package pkg = Package::open(shared_package());
  const Expected exp(pkg);
  // One thread / one ring entry: everything else queues behind it.
  OPEN_OR_SKIP(reader, pkg, 1, 1);
  const size_t rb = reader->record_bytes();
  const auto layers = moe_layers(pkg);
  const int ne = pkg.config().num_experts;
  Ops ops(layers.size() * ne, rb);
  for (size_t i = 0; i < ops.size(); ++i) ops.set(i, layers[i % layers.size()], (i * 7) % ne);
  reader->submit(ops.ptrs());
  for (size_t i = ops.size(); i-- > 0;) {
    ASSERT_EQ(wait_error(*reader, ops[i]), "");
    EXPECT_TRUE(same_record(ops[i], exp, rb));
  }
}

TEST_P(ReaderTest, ConcurrentSubmitsFromTwoThreads) {
  const Package pkg = Package::open(shared_package());
  const Expected exp(pkg);
  OPEN_OR_SKIP(reader, pkg, 3, 4);
  const size_t rb = reader->record_bytes();
  const auto layers = moe_layers(pkg);
  const int ne = pkg.config().num_experts;
  std::atomic<int> bad{0};
  auto client = [&](unsigned seed) {
    std::mt19937 rng(seed);
    Ops ops(8, rb);
    for (int round = 0; round < 300; ++round) {
      const size_t n = 1 + rng() % ops.size();
      for (size_t i = 0; i < n; ++i) ops.set(i, layers[rng() % layers.size()], rng() % ne);
      // Sometimes one batch, sometimes op by op.
      if (round % 3 == 0) {
        for (size_t i = 0; i < n; ++i) {
          ReadOp* one = &ops[i];
          reader->submit(std::span<ReadOp* const>(&one, 1));
        }
      } else {
        reader->submit(ops.ptrs(0, n));
      }
      for (size_t k = 0; k < n; ++k) {
        const size_t i = round % 2 ? n - 1 - k : k;  // reverse order every other round
        try {
          reader->wait(ops[i]);
        } catch (const Error&) {
          ++bad;
          continue;
        }
        if (!same_record(ops[i], exp, rb)) ++bad;
      }
    }
  };
  std::thread a(client, 1u), b(client, 2u);
  a.join();
  b.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST_P(ReaderTest, ResubmitsACompletedOp) {
  const Package pkg = Package::open(shared_package());
  const Expected exp(pkg);
  OPEN_OR_SKIP(reader, pkg);
  const size_t rb = reader->record_bytes();
  const int layer = moe_layers(pkg).back();
  Ops ops(1, rb);
  for (int e = 0; e < pkg.config().num_experts; ++e) {
    ops.set(0, layer, e);
    reader->submit(ops.ptrs());
    ASSERT_EQ(wait_error(*reader, ops[0]), "");
    EXPECT_TRUE(same_record(ops[0], exp, rb));
  }
}

// The layer file shrinks under an open reader: reads past the new end fail with an error naming
// the file; those before it are intact.
TEST_P(ReaderTest, FileTruncatedAfterOpenFailsNamingTheFile) {
  TempDir tmp;
  const Package pkg = Package::open(copy_package(tmp));
  const Expected exp(pkg);
  OPEN_OR_SKIP(reader, pkg);
  const size_t rb = reader->record_bytes();
  const auto layers = moe_layers(pkg);
  const int victim = layers[1], other = layers[0];
  const int ne = pkg.config().num_experts;
  const std::string path = pkg.expert_file_path(victim);
  // Aligned (a record cut after its first 4096 bytes), then unaligned (1234 bytes in).
  struct Cut {
    int first_bad;
    size_t extra;
  };
  for (const Cut cut : {Cut{10, kExpertAlignment}, Cut{5, 1234}, Cut{0, 0}}) {
    SCOPED_TRACE("truncated to " + std::to_string(cut.first_bad) + " records + " +
                 std::to_string(cut.extra) + " bytes");
    fs::resize_file(path, cut.first_bad * rb + cut.extra);
    Ops ops(ne + 1, rb);
    for (int e = 0; e < ne; ++e) ops.set(e, victim, e);
    ops.set(ne, other, ne - 1);
    reader->submit(ops.ptrs());
    for (int e = 0; e < ne; ++e) {
      const std::string err = wait_error(*reader, ops[e]);
      if (e < cut.first_bad) {
        EXPECT_EQ(err, "") << "expert " << e;
        EXPECT_TRUE(same_record(ops[e], exp, rb));
      } else {
        EXPECT_NE(err.find(path + ": "), std::string::npos) << err;
        EXPECT_NE(err.find("truncated: expert " + std::to_string(e) + " of layer " +
                           std::to_string(victim)),
                  std::string::npos)
            << err;
      }
    }
    EXPECT_EQ(wait_error(*reader, ops[ne]), "");
    EXPECT_TRUE(same_record(ops[ne], exp, rb));
  }
}

TEST_P(ReaderTest, InjectedFaultsSurfaceThroughWait) {
  const Package pkg = Package::open(shared_package());
  const Expected exp(pkg);
  OPEN_OR_SKIP(inner, pkg);
  const size_t rb = inner->record_bytes();
  FaultInjectingReader reader(std::move(inner));
  EXPECT_NE(std::string(reader.describe()).find("fault injection over "), std::string::npos);
  const auto layers = moe_layers(pkg);
  const int ne = pkg.config().num_experts;
  Ops ops(layers.size() * ne, rb);
  for (size_t li = 0; li < layers.size(); ++li)
    for (int e = 0; e < ne; ++e) ops.set(li * ne + e, layers[li], e);

  reader.fail_nth(3, InjectedFault{InjectedFault::Fail, "disk on fire", 0});
  reader.fail_record(layers[1], 7, InjectedFault{InjectedFault::Truncate, "", 4096});
  reader.fail_record(layers[2], -1, InjectedFault{InjectedFault::Fail, "layer gone", 0});
  reader.submit(ops.ptrs());
  for (size_t i = ops.size(); i-- > 0;) {
    ReadOp& op = ops[i];
    std::string err;
    try {
      reader.wait(op);
    } catch (const Error& e) {
      err = e.what();
    }
    if (i == 3) {
      EXPECT_EQ(err, "disk on fire (injected fault: expert 3 of layer " +
                         std::to_string(layers[0]) + ")");
    } else if (op.layer == layers[1] && op.expert == 7) {
      EXPECT_NE(err.find("truncated: expert 7 of layer " + std::to_string(layers[1]) +
                         " ends past the end of the file (injected short read: 4096 of " +
                         std::to_string(rb) + " bytes)"),
                std::string::npos)
          << err;
      EXPECT_EQ(std::memcmp(op.dst, exp.record(op.layer, op.expert), 4096), 0);
      EXPECT_TRUE(std::all_of(op.dst + 4096, op.dst + rb,
                              [](uint8_t b) { return b == FaultInjectingReader::kPoison; }));
    } else if (op.layer == layers[2]) {
      EXPECT_NE(err.find("layer gone (injected fault"), std::string::npos) << err;
    } else {
      EXPECT_EQ(err, "");
      EXPECT_TRUE(same_record(op, exp, rb));
    }
    EXPECT_EQ(op.state.load(), err.empty() ? ReadOp::Done : ReadOp::Failed);
  }
  EXPECT_EQ(reader.injected(), 2u + ne);

  // Disarmed: the same ops read cleanly through the decorator.
  reader.clear();
  for (size_t i = 0; i < ops.size(); ++i) ops.set(i, ops[i].layer, ops[i].expert);
  reader.submit(ops.ptrs());
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSERT_EQ(wait_error(reader, ops[i]), "");
    EXPECT_TRUE(same_record(ops[i], exp, rb));
  }
  EXPECT_EQ(reader.injected(), 2u + ne);
}

// Destroying a reader while reads are queued and in flight completes every op: Done with the
// right bytes, or Failed with "reader closed". Run under ASan/UBSan (scripts/test.sh).
TEST_P(ReaderTest, DestroyWithReadsInFlight) {
  const Package pkg = Package::open(shared_package());
  const Expected exp(pkg);
  const auto layers = moe_layers(pkg);
  const int ne = pkg.config().num_experts;
  size_t closed = 0, read = 0;
  for (int iter = 0; iter < 20; ++iter) {
    OPEN_OR_SKIP(reader, pkg, 2, 2);
    const size_t rb = reader->record_bytes();
    std::unique_ptr<ExpertReader> r = std::move(reader);
    if (iter % 2) {  // through the decorator, with faults in flight too
      auto f = std::make_unique<FaultInjectingReader>(std::move(r));
      f->fail_record(layers[0], -1, InjectedFault{});
      r = std::move(f);
    }
    Ops ops(200, rb);
    for (size_t i = 0; i < ops.size(); ++i) ops.set(i, layers[i % layers.size()], i % ne);
    r->submit(ops.ptrs());
    if (iter % 4 == 3) std::this_thread::sleep_for(std::chrono::microseconds(200));
    r.reset();
    for (size_t i = 0; i < ops.size(); ++i) {
      ReadOp& op = ops[i];
      ASSERT_TRUE(done(op)) << "op " << i << " still pending after the reader was destroyed";
      if (op.state.load() == ReadOp::Done) {
        ++read;
        EXPECT_TRUE(same_record(op, exp, rb));
      } else if (op.error.find("reader closed before expert") != std::string::npos) {
        ++closed;
        EXPECT_NE(op.error.find(pkg.expert_file_path(op.layer)), std::string::npos) << op.error;
      } else {
        EXPECT_TRUE(iter % 2 && op.layer == layers[0]) << op.error;
      }
    }
  }
  std::printf("destroyed with reads in flight: %zu read, %zu closed\n", read, closed);
}

INSTANTIATE_TEST_SUITE_P(Backends, ReaderTest,
                         ::testing::Values(Case{IoBackend::Threads, IoMode::PageCache},
                                           Case{IoBackend::Threads, IoMode::Direct},
                                           Case{IoBackend::IoUring, IoMode::PageCache},
                                           Case{IoBackend::IoUring, IoMode::Direct}),
                         case_name);

TEST(ExpertReader, NamesAndParsing) {
  for (IoMode m : {IoMode::PageCache, IoMode::Direct}) EXPECT_EQ(parse_io_mode(io_mode_name(m)), m);
  for (IoBackend b : {IoBackend::Threads, IoBackend::IoUring})
    EXPECT_EQ(parse_io_backend(io_backend_name(b)), b);
  EXPECT_STREQ(io_mode_name(IoMode::PageCache), "page-cache");
  EXPECT_STREQ(io_backend_name(IoBackend::IoUring), "io_uring");
  try {
    parse_io_mode("mmap");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "unknown I/O mode 'mmap' (accepted: page-cache, direct)");
  }
  try {
    parse_io_backend("aio");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "unknown I/O backend 'aio' (accepted: threads, io_uring)");
  }
}

TEST(ExpertReader, BadOptionsAndMissingFiles) {
  const Package pkg = Package::open(shared_package());
  ReaderOptions o;
  o.threads = 0;
  EXPECT_THROW(make_expert_reader(pkg, o), Error);
  o.backend = IoBackend::IoUring;
  o.depth = 0;
  EXPECT_THROW(make_expert_reader(pkg, o), Error);
  o.depth = 1u << 20;
  EXPECT_THROW(make_expert_reader(pkg, o), Error);

  TempDir tmp;
  const std::string missing = tmp / "nope.bin";
  try {
    LayerFiles files({"", missing}, kExpertAlignment, 4, IoMode::PageCache);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), missing + ": " + std::strerror(ENOENT));
  }
  EXPECT_THROW(LayerFiles({}, 1000, 4, IoMode::PageCache), Error);  // not 4096-aligned records
}

// ---- environments that refuse io_uring or O_DIRECT, simulated with seccomp in a child ----

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
constexpr uint32_t kAuditArch = 0;
#endif

constexpr int kNoSeccomp = 77;

// Runs `body` in a forked child under a seccomp filter made of a fixed preamble (allow other
// architectures; load the syscall number) followed by `rules`; returns the child's exit code and
// its message (or kNoSeccomp where filters cannot be installed).
std::pair<int, std::string> run_filtered(const std::vector<sock_filter>& rules,
                                         const std::function<std::string()>& body) {
  std::vector<sock_filter> filter = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
  };
  filter.insert(filter.end(), rules.begin(), rules.end());
  int pipefd[2];
  if (::pipe(pipefd) != 0) std::abort();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    sock_fprog prog{static_cast<unsigned short>(filter.size()), filter.data()};
    if (kAuditArch == 0 || ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
      ::_exit(kNoSeccomp);
    const std::string msg = body();
    if (::write(pipefd[1], msg.data(), msg.size()) < 0) ::_exit(2);
    ::_exit(0);
  }
  ::close(pipefd[1]);
  std::string msg;
  char buf[512];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) msg.append(buf, n);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), msg};
}

// The error text make_expert_reader gives (or "no error").
std::string reader_error(const Package& pkg, IoBackend b, IoMode m) {
  ReaderOptions o;
  o.backend = b;
  o.mode = m;
  try {
    auto r = make_expert_reader(pkg, o);
    return "no error";
  } catch (const Error& e) {
    return e.what();
  }
}

TEST(ExpertReader, IoUringRefusedBySeccomp) {
  const Package pkg = Package::open(shared_package());
  // io_uring_setup -> ENOSYS, as under Docker's default seccomp profile.
  const std::vector<sock_filter> rules = {
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  const auto [code, msg] = run_filtered(rules, [&] {
    return reader_error(pkg, IoBackend::IoUring, IoMode::PageCache) + "|" +
           reader_error(pkg, IoBackend::Threads, IoMode::PageCache);
  });
  if (code == kNoSeccomp) GTEST_SKIP() << "seccomp filters cannot be installed here";
  ASSERT_EQ(code, 0);
  EXPECT_EQ(msg, std::string("io_uring unavailable (") + std::strerror(ENOSYS) +
                     "): use --io-backend threads|no error");
}

TEST(ExpertReader, ODirectRefusedBySeccomp) {
  const Package pkg = Package::open(shared_package());
  // openat with O_DIRECT -> EINVAL, what open(2) says on a filesystem without O_DIRECT.
  const std::vector<sock_filter> rules = {
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args) + 2 * sizeof(uint64_t)),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, O_DIRECT, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  const auto [code, msg] = run_filtered(rules, [&] {
    return reader_error(pkg, IoBackend::Threads, IoMode::Direct) + "|" +
           reader_error(pkg, IoBackend::Threads, IoMode::PageCache);
  });
  if (code == kNoSeccomp) GTEST_SKIP() << "seccomp filters cannot be installed here";
  ASSERT_EQ(code, 0);
  EXPECT_EQ(msg, pkg.expert_file_path(moe_layers(pkg)[0]) +
                     ": O_DIRECT not supported by this filesystem (use --io page-cache)|no error");
}

}  // namespace
}  // namespace moeflux::test
