#include "experts/tier_memory.hpp"

#include <cstring>
#include <new>
#include <string>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "formats/package.hpp"

namespace moeflux {

namespace {

class HostTierMemory final : public TierMemory {
 public:
  HostTierMemory(AlignedBuffer arena, size_t record_bytes)
      : arena_(std::move(arena)), record_bytes_(record_bytes) {}
  uint8_t* slot_data(size_t slot) override { return arena_.data() + slot * record_bytes_; }
  const void* copy_in(uint8_t* dst, const uint8_t* src_host, size_t bytes) override {
    std::memcpy(dst, src_host, bytes);
    return nullptr;
  }
  void fence() override {}
  bool host_accessible() const override { return true; }
  const char* kind() const override { return "host"; }

 private:
  AlignedBuffer arena_;
  size_t record_bytes_;
};

}  // namespace

std::unique_ptr<TierMemory> make_host_tier_memory(size_t slots, size_t record_bytes,
                                                  const char* what) {
  try {
    return std::make_unique<HostTierMemory>(AlignedBuffer(slots * record_bytes, kExpertAlignment),
                                            record_bytes);
  } catch (const std::bad_alloc&) {
    fail(std::string(what) + ": cannot allocate " + std::to_string(slots * record_bytes >> 20) +
         " MiB for " + std::to_string(slots) + " expert records");
  }
}

}  // namespace moeflux
