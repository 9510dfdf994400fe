// Writes a moeflux package (formats/package.hpp, docs/FORMAT.md) atomically. Used by `convert`
// (checkpoint -> package) and `synth` (random weights -> package), so both produce exactly the
// layout the reader validates.
//
// Invariants:
//   - every file goes into "<out_dir>.partial-<pid>"; out_dir appears only through one rename in
//     finish(), after every file has been written and fsync'ed and manifest.json (written last)
//     is on disk: a directory named out_dir is always a whole package;
//   - a writer destroyed without a successful finish() removes its partial directory, so an
//     error (exception) leaves nothing behind; a killed process leaves at most "*.partial-*",
//     which no command opens as a package (it has no manifest, or not under the package name);
//   - resident.bin holds tensors in add_resident() order, each at a multiple of
//     kResidentAlignment; experts/layer_NNN.bin holds num_experts records of record_bytes, record
//     e at e * record_bytes, each zero-padded;
//   - the manifest (format version kPackageVersion) holds the CRC-32C of every tensor and of every
//     whole record (padding included), computed from the bytes as they are handed to the file.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/thread_pool.hpp"
#include "formats/package.hpp"

namespace moeflux {

// A file written sequentially; close() fsyncs it.
//
// Direct mode writes with O_DIRECT (no copy into the page cache, which on some machines costs
// more CPU than generating the data, and no page-cache pollution by files of hundreds of GB):
// 4096-aligned writes from 4096-aligned memory go straight to the device, anything else is
// gathered in two aligned staging buffers (one is filled while the other is written by a flusher
// thread, so the device never waits on the copy). Invariant: the buffer being filled always
// starts at a 4096-aligned file offset, and at most one write is in flight; close() writes its tail
// padded to 4096 and truncates the padding away, so the file's bytes are exactly those written, as
// in buffered mode. A file system that refuses O_DIRECT (tmpfs: EINVAL) gets buffered writes
// instead.
class OutFile {
 public:
  explicit OutFile(const std::string& path, bool direct = false);
  ~OutFile();
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;

  void write(const void* p, size_t n);
  // Writes zeros up to the next multiple of `alignment`.
  void pad_to(size_t alignment);
  // Buffered mode: starts write-back of what has been written so far, without waiting (keeps
  // the dirty page backlog short, so the final fsync does not stall on gigabytes).
  void start_writeback();
  uint64_t offset() const { return offset_; }
  const std::string& path() const { return path_; }
  bool direct() const { return direct_; }
  // Flushes, fsyncs and closes; throws naming the file.
  void close();

 private:
  void write_at(const uint8_t* p, size_t n, uint64_t at);  // all of it, at file offset `at`
  // Starts writing the current staging buffer (a multiple of 4096 bytes) on a flusher thread
  // and switches to the other one, so copying in overlaps the device write.
  void flush_staging();
  void wait_inflight();  // the flusher's write done; rethrows its error

  std::string path_;
  int fd_ = -1;
  uint64_t offset_ = 0;          // bytes written so far (staged ones included)
  uint64_t writeback_from_ = 0;  // buffered: bytes before this have had write-back started
  bool direct_ = false;
  AlignedBuffer staging_[2];  // direct mode only; staging_[which_] is being filled
  int which_ = 0;
  size_t staged_ = 0;  // bytes in staging_[which_]; they start at file offset offset_ - staged_
  std::future<void> inflight_;  // the flusher's write of the other buffer
};

class PackageWriter {
 public:
  // Refuses an existing out_dir unless `force` ("<out_dir>: already exists (pass --force to
  // replace it)"); creates the partial directory (and missing parents). Every method throws
  // moeflux::Error, or std::filesystem::filesystem_error from the file system (callers add
  // their context); after any exception the writer is only good for destruction.
  PackageWriter(const std::string& out_dir, bool force);
  ~PackageWriter();  // removes the partial directory unless finish() succeeded
  PackageWriter(const PackageWriter&) = delete;
  PackageWriter& operator=(const PackageWriter&) = delete;

  const std::string& target() const { return target_; }  // out_dir without trailing '/'
  const std::string& dir() const { return tmp_; }        // the partial directory

  // Appends one tensor to resident.bin; `bytes` must be exactly what shape and format need
  // (vector: f32 [n]; matrix: matrix_layout(fmt, rows, cols).total_bytes).
  void add_resident(const std::string& name, QuantFormat fmt, const std::vector<int64_t>& shape,
                    std::span<const uint8_t> bytes);
  // The same for a tensor too large to hold twice: produce(off, len, dst) fills bytes
  // [off, off + len) of it (len a multiple of `unit`, but the last chunk). Chunks of about
  // 16 MiB are produced into two reused buffers, each written by a writer thread while the next
  // is produced. produce runs on the calling thread (it may use a pool); its exceptions and
  // write errors are rethrown here.
  using ChunkProducer = std::function<void(uint64_t off, size_t len, uint8_t* dst)>;
  void add_resident(const std::string& name, QuantFormat fmt, const std::vector<int64_t>& shape,
                    size_t unit, const ChunkProducer& produce);
  uint64_t resident_bytes() const { return resident_bytes_; }

  // Builds experts/layer_NNN.bin: fill(e, rec) writes expert e's record: every byte of its
  // payload (gate | up | down, layout.payload_bytes(); rec is record_bytes long, 4096-aligned,
  // its padding after the payload zeroed by the writer). Records are built in batches on `pool`
  // (fill runs concurrently for distinct experts; an exception in fill is rethrown here) while the
  // previous batch is written by a writer thread. `on_bytes(n)` is called on this thread after each
  // batch is handed over (progress). Returns the file's bytes (num_experts * record_bytes).
  using RecordFiller = std::function<void(int expert, uint8_t* record)>;
  uint64_t write_expert_layer(int layer, const ExpertLayout& layout, int num_experts,
                              ThreadPool& pool, const RecordFiller& fill,
                              const std::function<void(uint64_t)>& on_bytes = {});

  // Copies `from` into the package as `rel` (relative path, parents created).
  void copy_file(const std::string& from, const std::string& rel);

  // Completes the package: fills m.resident (the tensors added) and m.expert_files (one entry
  // per layer, "" where the config has no MoE layer; every MoE layer must have been written),
  // writes manifest.json last, fsyncs it and the directory, and renames the partial directory
  // to out_dir (replacing an existing one when forced).
  void finish(PackageManifest& m);

  // Asks every writer in the process to stop: the next write fails with "interrupted" (and the
  // partial directory is removed as for any error). Async-signal-safe (for SIGINT handlers).
  static void request_cancel();
  static bool cancel_requested();

 private:
  void check_cancel() const;
  OutFile& resident_file();
  // Pads resident.bin to the next tensor and records it; returns its entry.
  ResidentTensor& begin_resident(const std::string& name, QuantFormat fmt,
                                 const std::vector<int64_t>& shape);

  std::string target_, tmp_;
  bool finished_ = false;
  std::unique_ptr<OutFile> resident_;
  std::vector<ResidentTensor> resident_tensors_;
  AlignedBuffer chunks_[2];  // add_resident(..., produce): produced while the other is written
  uint64_t resident_bytes_ = 0;
  std::vector<int> layers_written_;
  std::map<int, std::vector<uint32_t>> record_crcs_;  // per layer written: CRC-32C per record
};

}  // namespace moeflux
