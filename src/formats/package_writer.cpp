#include "formats/package_writer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <filesystem>
#include <future>
#include <mutex>

#include "core/aligned_buffer.hpp"
#include "core/crc32c.hpp"
#include "core/error.hpp"
#include "core/output_file.hpp"

namespace fs = std::filesystem;

namespace moeflux {

namespace {

std::atomic<bool> g_cancel{false};
static_assert(std::atomic<bool>::is_always_lock_free, "request_cancel must be async-signal-safe");

// Batches of at least this many bytes are handed to the writer thread (large sequential writes).
constexpr size_t kMinBatchBytes = size_t{16} << 20;
// OutFile's staging buffer in direct mode (a multiple of 4096).
constexpr size_t kStagingBytes = size_t{8} << 20;

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno(path);
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    throw_errno(path + ": fsync");
  }
  ::close(fd);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// OutFile

OutFile::OutFile(const std::string& path, bool direct) : path_(path) {
  const int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
  if (direct) {
    fd_ = ::open(path.c_str(), flags | O_DIRECT, 0644);
    direct_ = fd_ >= 0;
    if (fd_ < 0 && errno != EINVAL) throw_errno(path);
  }
  if (fd_ < 0) fd_ = ::open(path.c_str(), flags, 0644);
  if (fd_ < 0) throw_errno(path);
  if (direct_)
    for (AlignedBuffer& b : staging_) b = AlignedBuffer(kStagingBytes, kExpertAlignment);
}

OutFile::~OutFile() {
  if (inflight_.valid()) inflight_.wait();  // never let a write outlive the descriptor
  if (fd_ >= 0) ::close(fd_);
}

void OutFile::write_at(const uint8_t* p, size_t n, uint64_t at) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(at));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && direct_) {
        // O_DIRECT accepted at open but refused for writes: continue buffered. The staging
        // buffer stays (write() keeps using it), only the descriptor changes mode.
        const int fl = ::fcntl(fd_, F_GETFL);
        if (fl >= 0 && ::fcntl(fd_, F_SETFL, fl & ~O_DIRECT) == 0) {
          direct_ = false;
          continue;
        }
      }
      throw_errno(path_ + ": write");
    }
    p += w;
    at += static_cast<uint64_t>(w);
    n -= static_cast<size_t>(w);
  }
}

void OutFile::wait_inflight() {
  if (inflight_.valid()) inflight_.get();
}

void OutFile::flush_staging() {
  MF_ASSERT(staged_ % kExpertAlignment == 0);
  wait_inflight();  // the other buffer is free again
  const uint8_t* p = staging_[which_].data();
  const size_t n = staged_;
  const uint64_t at = offset_ - staged_;
  inflight_ = std::async(std::launch::async, [this, p, n, at] { write_at(p, n, at); });
  which_ ^= 1;
  staged_ = 0;
}

void OutFile::write(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  if (staging_[0].size() == 0) {  // buffered
    write_at(b, n, offset_);
    offset_ += n;
    return;
  }
  while (n > 0) {
    // Whole aligned blocks from aligned memory go straight out (staged_ == 0 implies an
    // aligned file offset, by the staging invariant).
    if (staged_ == 0 && reinterpret_cast<uintptr_t>(b) % kExpertAlignment == 0 &&
        n >= kExpertAlignment) {
      const size_t m = n / kExpertAlignment * kExpertAlignment;
      wait_inflight();  // one write at a time (write_at may switch the descriptor's mode)
      write_at(b, m, offset_);
      b += m;
      n -= m;
      offset_ += m;
      continue;
    }
    AlignedBuffer& stage = staging_[which_];
    const size_t m = std::min(n, stage.size() - staged_);
    std::memcpy(stage.data() + staged_, b, m);
    staged_ += m;
    offset_ += m;
    b += m;
    n -= m;
    if (staged_ == stage.size()) flush_staging();
  }
}

void OutFile::pad_to(size_t alignment) {
  static const uint8_t zeros[4096] = {};
  while (offset_ % alignment)
    write(zeros, std::min<size_t>(alignment - offset_ % alignment, sizeof zeros));
}

void OutFile::start_writeback() {
  if (staging_[0].size() != 0 || offset_ == writeback_from_) return;
#ifdef SYNC_FILE_RANGE_WRITE
  // Advisory: a file system without support only loses the early start.
  (void)::sync_file_range(fd_, static_cast<off_t>(writeback_from_),
                          static_cast<off_t>(offset_ - writeback_from_), SYNC_FILE_RANGE_WRITE);
#endif
  writeback_from_ = offset_;
}

void OutFile::close() {
  if (staged_ > 0) {  // the tail: padded to a whole block, then the padding truncated away
    const size_t padded = (staged_ + kExpertAlignment - 1) / kExpertAlignment * kExpertAlignment;
    std::memset(staging_[which_].data() + staged_, 0, padded - staged_);
    const uint64_t end = offset_;
    offset_ += padded - staged_;
    staged_ = padded;
    flush_staging();
    wait_inflight();
    offset_ = end;
    if (::ftruncate(fd_, static_cast<off_t>(end)) != 0) throw_errno(path_ + ": truncate");
  }
  wait_inflight();
  if (::fsync(fd_) != 0) throw_errno(path_ + ": fsync");
  if (::close(std::exchange(fd_, -1)) != 0) throw_errno(path_ + ": close");
}

// ---------------------------------------------------------------------------------------------
// PackageWriter

void PackageWriter::request_cancel() {
  g_cancel.store(true, std::memory_order_relaxed);
}
bool PackageWriter::cancel_requested() {
  return g_cancel.load(std::memory_order_relaxed);
}

void PackageWriter::check_cancel() const {
  if (cancel_requested()) fail(target_ + ": interrupted; nothing was written");
}

PackageWriter::PackageWriter(const std::string& out_dir, bool force) : target_(out_dir) {
  while (target_.size() > 1 && target_.back() == '/') target_.pop_back();
  if (fs::exists(target_) && !force)
    fail(target_ + ": already exists (pass --force to replace it)");
  // The directory it goes in must exist (a mistyped path creates no tree), checked before any work.
  const fs::path parent = fs::path(target_).parent_path();
  if (!parent.empty() && !fs::is_directory(parent))
    fail(target_ + ": cannot create the package: directory " + parent.string() + " does not exist");
  tmp_ = target_ + ".partial-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(tmp_, ec);  // a stale one of a previous process with this pid
  if (!ec) fs::create_directories(tmp_, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove_all(tmp_, ignored);
    fail(tmp_ + ": cannot create the package directory: " + ec.message());
  }
}

PackageWriter::~PackageWriter() {
  resident_.reset();  // close the descriptor before removing the directory
  if (!finished_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

OutFile& PackageWriter::resident_file() {
  if (!resident_)
    resident_ = std::make_unique<OutFile>(tmp_ + "/" + kResidentName, /*direct=*/true);
  return *resident_;
}

namespace {

// Bytes of a stored tensor of this shape and format (vectors: f32 [n]).
uint64_t tensor_bytes(QuantFormat fmt, const std::vector<int64_t>& shape) {
  if (shape.size() == 1) {
    MF_ASSERT(fmt == QuantFormat::f32() && shape[0] > 0);
    return static_cast<uint64_t>(shape[0]) * sizeof(float);
  }
  MF_ASSERT(shape.size() == 2 && shape[0] > 0 && shape[1] > 0);
  return matrix_layout(fmt, static_cast<size_t>(shape[0]), static_cast<size_t>(shape[1]))
      .total_bytes;
}

}  // namespace

ResidentTensor& PackageWriter::begin_resident(const std::string& name, QuantFormat fmt,
                                              const std::vector<int64_t>& shape) {
  check_cancel();
  MF_ASSERT(!finished_);
  OutFile& out = resident_file();
  out.pad_to(kResidentAlignment);
  ResidentTensor t;
  t.name = name;
  t.fmt = fmt;
  t.shape = shape;
  t.offset = out.offset();
  t.bytes = tensor_bytes(fmt, shape);
  resident_bytes_ += t.bytes;
  resident_tensors_.push_back(std::move(t));
  return resident_tensors_.back();
}

void PackageWriter::add_resident(const std::string& name, QuantFormat fmt,
                                 const std::vector<int64_t>& shape,
                                 std::span<const uint8_t> bytes) {
  ResidentTensor& t = begin_resident(name, fmt, shape);
  MF_ASSERT(bytes.size() == t.bytes);
  t.crc32c = crc32c(bytes.data(), bytes.size());
  OutFile& out = resident_file();
  out.write(bytes.data(), bytes.size());
  out.start_writeback();
}

void PackageWriter::add_resident(const std::string& name, QuantFormat fmt,
                                 const std::vector<int64_t>& shape, size_t unit,
                                 const ChunkProducer& produce) {
  MF_ASSERT(unit > 0);
  const uint64_t total = begin_resident(name, fmt, shape).bytes;
  const size_t index = resident_tensors_.size() - 1;
  uint32_t crc = 0;  // of the chunks written so far, updated by the (one at a time) writer
  const size_t chunk = std::max<size_t>(unit, kMinBatchBytes / unit * unit);
  for (AlignedBuffer& b : chunks_)
    if (b.size() < chunk) b = AlignedBuffer(chunk, kExpertAlignment);
  OutFile& out = resident_file();
  std::future<void> pending;  // the write of the previous chunk
  int which = 0;
  for (uint64_t off = 0; off < total; off += chunk, which ^= 1) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(chunk, total - off));
    uint8_t* buf = chunks_[which].data();
    std::exception_ptr error;
    try {
      check_cancel();
      produce(off, len, buf);
    } catch (...) {
      error = std::current_exception();
    }
    if (pending.valid()) pending.get();  // frees the other buffer; rethrows a write error
    if (error) std::rethrow_exception(error);
    pending = std::async(std::launch::async, [&out, &crc, buf, len] {
      crc = crc32c(buf, len, crc);
      out.write(buf, len);
      out.start_writeback();
    });
  }
  if (pending.valid()) pending.get();
  resident_tensors_[index].crc32c = crc;
}

uint64_t PackageWriter::write_expert_layer(int layer, const ExpertLayout& el, int num_experts,
                                           ThreadPool& pool, const RecordFiller& fill,
                                           const std::function<void(uint64_t)>& on_bytes) {
  MF_ASSERT(!finished_ && num_experts > 0 && el.record_bytes % kExpertAlignment == 0);
  check_cancel();
  fs::create_directories(tmp_ + "/experts");
  const size_t rb = el.record_bytes;
  const int batch = static_cast<int>(
      std::min<size_t>(static_cast<size_t>(num_experts),
                       std::max<size_t>({pool.size() * 2, (kMinBatchBytes + rb - 1) / rb, 1})));
  // Two buffers: the pool fills one while the writer thread writes the other.
  AlignedBuffer bufs[2] = {AlignedBuffer(rb * batch, kExpertAlignment),
                           AlignedBuffer(rb * batch, kExpertAlignment)};
  OutFile out(tmp_ + "/" + expert_file_name(layer), /*direct=*/true);
  std::vector<uint32_t> crcs(static_cast<size_t>(num_experts));
  std::future<void> pending;  // the write of the previous batch
  int which = 0;
  for (int e0 = 0; e0 < num_experts; e0 += batch, which ^= 1) {
    check_cancel();
    const int n = std::min(batch, num_experts - e0);
    uint8_t* buf = bufs[which].data();
    const size_t payload = el.payload_bytes();
    for (int i = 0; i < n; ++i) std::memset(buf + i * rb + payload, 0, rb - payload);
    std::exception_ptr error;
    std::mutex error_mu;
    pool.parallel_for(static_cast<size_t>(n), [&](size_t b, size_t end) {
      for (size_t i = b; i < end; ++i) {
        try {
          fill(e0 + static_cast<int>(i), buf + i * rb);
          crcs[e0 + i] = crc32c(buf + i * rb, rb);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mu);
          if (!error) error = std::current_exception();
        }
      }
    });
    if (pending.valid()) pending.get();  // rethrows a write error; frees the other buffer
    if (error) std::rethrow_exception(error);
    pending = std::async(std::launch::async, [&out, buf, bytes = rb * n] {
      out.write(buf, bytes);
      out.start_writeback();
    });
    if (on_bytes) on_bytes(rb * n);
  }
  if (pending.valid()) pending.get();
  out.close();
  layers_written_.push_back(layer);
  record_crcs_[layer] = std::move(crcs);
  return static_cast<uint64_t>(num_experts) * rb;
}

void PackageWriter::copy_file(const std::string& from, const std::string& rel) {
  check_cancel();
  const fs::path to = fs::path(tmp_) / rel;
  fs::create_directories(to.parent_path());
  fs::copy_file(from, to);
  fsync_path(to.string());
}

void PackageWriter::finish(PackageManifest& m) {
  MF_ASSERT(!finished_);
  check_cancel();
  const ModelConfig& c = m.config;
  m.version = kPackageVersion;
  m.resident = resident_tensors_;
  m.expert_files.clear();
  m.record_crc32c.assign(c.num_layers, {});
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.layer_is_moe[l]) {
      m.expert_files.emplace_back();
      continue;
    }
    MF_ASSERT(std::find(layers_written_.begin(), layers_written_.end(), l) !=
              layers_written_.end());
    m.expert_files.push_back(expert_file_name(l));
    m.record_crc32c[l] = record_crcs_.at(l);
  }
  resident_file().close();  // an empty resident.bin still exists (the reader maps it)
  resident_.reset();

  // The manifest is written last: a package without one is never taken for whole.
  write_output_file(tmp_ + "/" + kManifestName, {m.to_json().dump(1) + "\n"});
  if (fs::exists(tmp_ + "/experts")) fsync_path(tmp_ + "/experts");
  fsync_path(tmp_);
  if (fs::exists(target_)) {
    const std::string old = target_ + ".old-" + std::to_string(::getpid());
    fs::rename(target_, old);
    try {
      fs::rename(tmp_, target_);
    } catch (...) {
      std::error_code ec;
      fs::rename(old, target_, ec);  // put the previous package back
      throw;
    }
    finished_ = true;
    std::error_code ec;
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp_, target_);
    finished_ = true;
  }
  // Make the rename durable; best effort: the package is complete either way.
  const int fd = ::open(fs::absolute(target_).parent_path().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

}  // namespace moeflux
