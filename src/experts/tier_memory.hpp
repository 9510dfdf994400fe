// Where a cache tier keeps its expert records, and how records get into it.
//
// A tier's memory is an arena of equal slots, one record each (record_bytes, 4096-aligned).
// Records enter a tier either from storage (the RAM tier: reads land there directly) or by a
// copy from a slower tier's slot (promotion). A copy may be asynchronous (a GPU tier queues
// host->device copies): copy_in returns the copy's readiness (an event of the backend's copy
// stream, which ops wait for on the device: ExpertTask::ready), or null when the record is
// complete on return. fence() waits on the host for every copy issued so far: afterwards their
// sources may be overwritten.
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
  // The source must stay unchanged until fence().
  virtual const void* copy_in(uint8_t* dst, const uint8_t* src_host, size_t bytes) = 0;
  virtual void fence() = 0;
  // Time the copies took where they ran (device time from the first copy of a fence window
  // starting to its last one ending, summed over the windows fenced so far); 0 when unknown.
  virtual double transfer_seconds() const { return 0; }
  virtual bool host_accessible() const = 0;  // the CPU can read (and copy from) the slots
  virtual const char* kind() const = 0;      // "host", "cuda", ...
};

// `slots` records of `record_bytes` in one 4096-aligned host allocation; copies are memcpy.
// Throws moeflux::Error (naming `what`, e.g. "--ram-cache") if the memory cannot be had.
std::unique_ptr<TierMemory> make_host_tier_memory(size_t slots, size_t record_bytes,
                                                  const char* what);

}  // namespace moeflux
