// Where a cache tier keeps its expert records, and how records get into it.
//
// A tier's memory is an arena of equal slots, one record each (record_bytes, 4096-aligned).
// Records enter a tier either from storage (the RAM tier: reads land there directly) or by a
// copy from a slower tier's slot (promotion). A copy may be asynchronous (a GPU tier queues
// host->device copies): copy_in returns the copy's readiness (an event of the backend's copy
// stream, which ops wait for on the device: ExpertTask::ready), or null when the record is
// complete on return.
//
// Copies are grouped in windows: a window opens with the first copy after the last close and
// ends at close_window(), which does not wait. A new window's copies may overwrite slots that
// compute issued before it still reads: the memory orders them after that compute (a GPU tier:
// its copy stream waits for the compute stream on the device). A copy's source must stay
// unchanged until its window has landed (landed(), polled) or until fence(), which waits on the
// host for every copy issued so far.
//
// Invariant the streamer relies on: every tier except the fastest is host-accessible, because
// promotions copy *from* host memory. The fastest tier may be device memory (CUDA backend).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace moeflux {

class TierMemory {
 public:
  virtual ~TierMemory() = default;
  virtual uint8_t* slot_data(size_t slot) = 0;
  // Copies `bytes` from host memory into `dst` (a slot of this tier). May return before the
  // copy is done: then returns its readiness (valid until the next copy into `dst`), else null.
  // The source must stay unchanged until the copy's window has landed.
  virtual const void* copy_in(uint8_t* dst, const uint8_t* src_host, size_t bytes) = 0;
  // Ends the open copy window without waiting: returns its id (ids increase from 1), or 0 when
  // no copy is outstanding (every copy so far is complete, e.g. synchronous memory).
  virtual uint64_t close_window() { return 0; }
  // Whether every copy of window `id`, and of every window before it, has landed. Does not wait.
  virtual bool landed(uint64_t id) { return id == 0; }
  // Closes the open window and waits on the host until every copy issued so far has landed.
  virtual void fence() = 0;
  // Copies whose windows are known to have landed since the last call: the bytes they moved
  // and the time they took where they ran (device time from a window's first copy starting to
  // its close, summed over windows: close a window right after its last copy for that to be the
  // copies' time); zeros when unknown (synchronous memory).
  // read_*: the same for compute that read slower tiers in place (open_reads to close_reads).
  struct Transferred {
    double bytes = 0, seconds = 0;
    double read_bytes = 0, read_seconds = 0;
  };
  virtual Transferred take_transferred() { return {}; }
  virtual bool host_accessible() const = 0;  // the CPU can read (and copy from) the slots
  virtual const char* kind() const = 0;      // "host", "cuda", ...
  // Whether the compute device can read this tier's slots where they lie, at the same
  // addresses (page-locked host memory mapped into a GPU's address space): a record there can
  // be handed to device compute without a copy (ExpertHandle::in_place).
  virtual bool device_readable() const { return false; }
  // (The fastest tier.) Marks where compute that reads slower tiers in place starts (the
  // compute issued so far has not): the next close_reads() is timed from here, where it ran.
  virtual void open_reads() {}
  // Closes the open copy window, if any, then one more window that lands only once all
  // compute issued so far has finished: slots of slower tiers that this compute reads in place
  // stay unchanged until it has landed (landed(), fence() as for copies). `bytes` (what that
  // compute read in place since open_reads) and the time from open_reads to the compute's end
  // are reported by take_transferred once landed. 0 when compute is complete on return
  // (synchronous memory).
  virtual uint64_t close_reads(double bytes) {
    (void)bytes;
    return 0;
  }
};

// `slots` records of `record_bytes` in one 4096-aligned host allocation; copies are memcpy.
// Throws moeflux::Error (naming `what`, e.g. "--ram-cache") if the memory cannot be had.
std::unique_ptr<TierMemory> make_host_tier_memory(size_t slots, size_t record_bytes,
                                                  const char* what);

}  // namespace moeflux
