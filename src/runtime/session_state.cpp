// Session state files: Session::state_size / state_save / state_load (format in session.hpp).
//
// Layout (host byte order, little-endian on every supported machine):
//   StateHeader
//   int32  ids[position]
//   float  logits[vocab]                       (of position - 1)
//   per full-attention layer, in layer order: float K[position][kv], V[position][kv]
//   float  recurrent[recurrent_floats]         (per linear-attention layer: conv window, S)
//   uint32 crc32c of every byte before it
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "core/crc32c.hpp"
#include "core/error.hpp"
#include "core/output_file.hpp"
#include "runtime/session.hpp"

namespace moeflux {

namespace {

constexpr char kMagic[8] = {'M', 'F', 'S', 'T', 'A', 'T', 'E', '\0'};
constexpr uint32_t kStateVersion = 1;

struct StateHeader {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t model_key;  // model_key(): which model the state belongs to
  uint64_t position;   // ids evaluated
  uint64_t vocab;      // logits per position
  uint64_t kv_floats;  // K and V floats per position, all attention layers
  uint64_t recurrent_floats;
};
static_assert(sizeof(StateHeader) == 56);

// The model's shape and its resident tensors (names and CRC-32C): a state of another model,
// or of the same shape with other weights, is refused.
uint64_t model_key(const Model& m) {
  const ModelConfig& c = m.config();
  std::string shape = std::string(family_name(c.family)) + "/" + std::to_string(c.num_layers) +
                      "/" + std::to_string(c.vocab_size) + "/" + std::to_string(c.num_kv_heads) +
                      "/" + std::to_string(c.head_dim) + "/" + std::to_string(c.linear_conv_dim());
  for (LayerKind k : c.layer_kind) shape += k == LayerKind::FullAttention ? 'A' : 'L';
  uint32_t weights = 0;
  for (const ResidentTensor& t : m.package().manifest().resident) {
    weights = crc32c(t.name.data(), t.name.size(), weights);
    weights = crc32c(&t.crc32c, sizeof t.crc32c, weights);
  }
  return (uint64_t(crc32c(shape.data(), shape.size())) << 32) | weights;
}

size_t kv_floats_per_position(const SequenceState& s) {
  size_t n = 0;
  for (const LayerState& ls : s.layers)
    if (ls.kv.k.rank) n += ls.kv.k.cols() + ls.kv.v.cols();
  return n;
}

size_t state_bytes(size_t pos, size_t vocab, size_t kv, size_t rec) {
  return sizeof(StateHeader) + pos * sizeof(int32_t) + (vocab + pos * kv + rec) * sizeof(float) +
         sizeof(uint32_t);
}

}  // namespace

size_t Session::state_size() const {
  return state_bytes(size_t(pos_), logits_.size(), kv_floats_per_position(state_),
                     recurrent_floats());
}

std::vector<std::byte> Session::state_save() const {
  const size_t pos = size_t(pos_);
  StateHeader h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kStateVersion;
  h.model_key = model_key(model());
  h.position = pos;
  h.vocab = logits_.size();
  h.kv_floats = kv_floats_per_position(state_);
  h.recurrent_floats = recurrent_floats();
  std::vector<std::byte> out(state_size());
  std::byte* p = out.data();
  auto put = [&](const void* src, size_t n) {
    if (n > 0) std::memcpy(p, src, n);  // an empty vector's data() may be null
    p += n;
  };
  put(&h, sizeof h);
  put(tokens_.data(), pos * sizeof(int32_t));
  put(logits_.data(), logits_.size() * sizeof(float));
  for (const LayerState& ls : state_.layers) {
    if (!ls.kv.k.rank) continue;
    for (const Tensor* t : {&ls.kv.k, &ls.kv.v}) {
      engine_.download(*t, reinterpret_cast<float*>(p), pos);
      p += pos * t->cols() * sizeof(float);
    }
  }
  save_recurrent(reinterpret_cast<float*>(p));
  p += h.recurrent_floats * sizeof(float);
  const uint32_t crc = crc32c(out.data(), size_t(p - out.data()));
  put(&crc, sizeof crc);
  MF_ASSERT(p == out.data() + out.size());
  return out;
}

void Session::state_load(std::span<const std::byte> in) {
  // Everything is checked before the session changes.
  StateHeader h;
  if (in.size() < sizeof h + sizeof(uint32_t))
    fail("session state: truncated (" + std::to_string(in.size()) + " bytes)");
  std::memcpy(&h, in.data(), sizeof h);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) fail("session state: not a moeflux state");
  if (h.version != kStateVersion)
    fail("session state: version " + std::to_string(h.version) + ", this build reads version " +
         std::to_string(kStateVersion));
  if (h.model_key != model_key(model()) || h.vocab != logits_.size() ||
      h.kv_floats != kv_floats_per_position(state_) || h.recurrent_floats != recurrent_floats())
    fail("session state: saved for another model than " + model().package().dir());
  if (h.position > context_)
    fail("session state: " + std::to_string(h.position) + " positions exceed this session's " +
         std::to_string(context_) + " (--ctx)");
  const size_t pos = size_t(h.position);
  const size_t want = state_bytes(pos, h.vocab, h.kv_floats, h.recurrent_floats);
  if (in.size() != want)
    fail("session state: " + std::to_string(in.size()) + " bytes, its header says " +
         std::to_string(want));
  uint32_t crc;
  std::memcpy(&crc, in.data() + in.size() - sizeof crc, sizeof crc);
  if (crc32c(in.data(), in.size() - sizeof crc) != crc)
    fail("session state: checksum mismatch (the data is corrupt)");
  const std::byte* p = in.data() + sizeof h;
  std::vector<int> ids(pos);
  if (pos > 0) std::memcpy(ids.data(), p, pos * sizeof(int32_t));
  p += pos * sizeof(int32_t);
  for (int t : ids)
    if (t < 0 || size_t(t) >= h.vocab)
      fail("session state: token id " + std::to_string(t) + " is out of range");

  engine_.reset_sequence(state_);
  engine_.cancel_prefetches();
  checkpoints_.clear();
  std::memcpy(logits_.data(), p, h.vocab * sizeof(float));
  p += h.vocab * sizeof(float);
  for (const LayerState& ls : state_.layers) {
    if (!ls.kv.k.rank) continue;
    for (const Tensor* t : {&ls.kv.k, &ls.kv.v}) {
      // The bytes may not be aligned for float: stage them.
      std::vector<float> rows(pos * t->cols());
      if (!rows.empty()) std::memcpy(rows.data(), p, rows.size() * sizeof(float));
      engine_.upload(rows.data(), *t, pos);
      p += rows.size() * sizeof(float);
    }
  }
  std::vector<float> rec(h.recurrent_floats);  // none without DeltaNet layers
  if (!rec.empty()) std::memcpy(rec.data(), p, rec.size() * sizeof(float));
  load_recurrent(rec.data());
  tokens_.assign(ids.begin(), ids.end());
  pos_ = int(pos);
}

void Session::state_save_file(const std::string& path) const {
  const std::vector<std::byte> s = state_save();
  write_output_file(path, {std::string_view(reinterpret_cast<const char*>(s.data()), s.size())},
                    "session state");
}

void Session::state_load_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw_errno("session state: cannot open " + path);
  if (!S_ISREG(st.st_mode)) fail("session state: " + path + " is not a regular file");
  const size_t most =
      state_bytes(context_, logits_.size(), kv_floats_per_position(state_), recurrent_floats());
  if (size_t(st.st_size) > most)
    fail("session state: " + path + " is larger than any state of this session (" +
         std::to_string(st.st_size) + " bytes)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_errno("session state: cannot open " + path);
  std::vector<std::byte> bytes(size_t(st.st_size));
  in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!in) fail("session state: cannot read " + path);
  try {
    state_load(bytes);
  } catch (const Error& e) {
    fail(path + ": " + e.what());
  }
}

}  // namespace moeflux
