// Tests of MappedFile, SafetensorsFile and Checkpoint on small files written here.
#include "formats/safetensors.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/mapped_file.hpp"

namespace moeflux {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- a tiny safetensors writer -------------------------------------------------------------

std::string u64le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file from a literal header (padded with spaces to a multiple of 8, as the reference writer
// does) and a data section.
std::string raw_file(const std::string& header, const std::string& data = "") {
  std::string h = header;
  while (h.size() % 8 != 0) h += ' ';
  return u64le(h.size()) + h + data;
}

struct Spec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;  // the tensor's data
};

// A well-formed file: tensors stored back to back in the given order.
std::string make_file(const std::vector<Spec>& specs, const json& metadata = nullptr) {
  json header = json::object();
  std::string data;
  for (const Spec& s : specs) {
    header[s.name] = {{"dtype", s.dtype},
                      {"shape", s.shape},
                      {"data_offsets", {data.size(), data.size() + s.bytes.size()}}};
    data += s.bytes;
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  return raw_file(header.dump(), data);
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// The message of the moeflux::Error `f` throws, or "" (and a test failure) if it throws none.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a moeflux::Error";
  return "";
}

// `stmt` throws a one-line moeflux::Error whose message contains `needle1` and `needle2`.
#define EXPECT_ERROR(stmt, needle1, needle2)                                         \
  do {                                                                               \
    const std::string msg_ = error_of([&] { stmt; });                                \
    EXPECT_NE(msg_.find(needle1), std::string::npos) << "message: " << msg_;         \
    EXPECT_NE(msg_.find(needle2), std::string::npos) << "message: " << msg_;         \
    EXPECT_EQ(msg_.find('\n'), std::string::npos) << "multi-line message: " << msg_; \
  } while (0)

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "moeflux_st_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Writes `bytes` to <dir>/<name> (creating subdirectories) and returns the path.
  std::string write(const std::string& name, const std::string& bytes) {
    const fs::path p = fs::path(dir_) / name;
    fs::create_directories(p.parent_path());
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good());
    return p.string();
  }

  // Writes a file with the literal header `header` and opens it, expecting an Error that names
  // the file and contains `needle`.
  void expect_bad_header(const std::string& header, const std::string& needle,
                         const std::string& data = std::string(64, '\0')) {
    SCOPED_TRACE(header);
    const std::string path = write("bad.safetensors", raw_file(header, data));
    EXPECT_ERROR(SafetensorsFile::open(path), path, needle);
  }

  std::string dir_;
};

// ---- MappedFile ------------------------------------------------------------------------------

TEST_F(SafetensorsTest, MappedFileMapsBytes) {
  const std::string path = write("a.bin", "hello");
  MappedFile m = MappedFile::open(path);
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m.data()), 5), "hello");
  EXPECT_EQ(m.path(), path);
  m.advise_random();
  m.advise_sequential();

  MappedFile moved = std::move(m);
  EXPECT_EQ(m.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(moved.size(), 5u);
  EXPECT_EQ(moved.data()[4], 'o');
}

TEST_F(SafetensorsTest, MappedFileEmptyAndErrors) {
  const std::string path = write("empty.bin", "");
  const MappedFile m = MappedFile::open(path);
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.data(), nullptr);

  const std::string missing = dir_ + "/missing.bin";
  EXPECT_ERROR(MappedFile::open(missing), missing, "No such file");
  EXPECT_ERROR(MappedFile::open(dir_), dir_, "not a regular file");
}

// ---- SafetensorsFile: well-formed files --------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripsDTypesShapesAndValues) {
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 42.0f};
  const std::vector<uint16_t> bf16 = {f32_to_bf16(1.0f), f32_to_bf16(-0.5f), f32_to_bf16(3.0f),
                                      f32_to_bf16(7.0f)};
  const std::vector<uint16_t> f16 = {f32_to_f16(0.25f), f32_to_f16(-8.0f), f32_to_f16(2.0f),
                                     f32_to_f16(65504.0f)};
  const std::vector<int64_t> i64 = {-1, std::numeric_limits<int64_t>::max(), 7, -9};
  const std::vector<uint8_t> u8 = {0, 1, 2, 254, 255};
  const std::vector<uint8_t> boolean = {1, 0, 1};
  const std::vector<double> f64 = {3.141592653589793};
  const std::vector<int8_t> i8 = {-128};
  const std::vector<uint8_t> f8 = {0x38, 0xb8};
  const std::vector<Spec> specs = {
      {"model.w", "F32", {2, 3}, bytes_of(f32)}, {"model.b", "BF16", {4}, bytes_of(bf16)},
      {"h", "F16", {2, 1, 2}, bytes_of(f16)},    {"idx", "I64", {2, 2}, bytes_of(i64)},
      {"bytes", "U8", {5}, bytes_of(u8)},        {"mask", "BOOL", {3}, bytes_of(boolean)},
      {"pi", "F64", {1}, bytes_of(f64)},         {"scalar", "I8", {}, bytes_of(i8)},
      {"fp8", "F8_E4M3", {1, 2}, bytes_of(f8)},
  };
  const std::string path =
      write("model.safetensors", make_file(specs, {{"format", "pt"}, {"note", "x"}}));
  const SafetensorsFile f = SafetensorsFile::open(path);

  ASSERT_EQ(f.tensors().size(), specs.size());
  EXPECT_EQ(f.metadata().value("format", ""), "pt");
  EXPECT_EQ(f.path(), path);
  for (const Spec& s : specs) {
    SCOPED_TRACE(s.name);
    const TensorInfo* t = f.find(s.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->name, s.name);
    EXPECT_STREQ(dtype_name(t->dtype), s.dtype.c_str());
    EXPECT_EQ(t->shape, s.shape);
    EXPECT_EQ(t->nbytes, s.bytes.size());
    EXPECT_EQ(t->numel() * dtype_size(t->dtype), t->nbytes);
    EXPECT_EQ(t->file, path);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(t->data), t->nbytes), s.bytes);
  }
  EXPECT_EQ(f.find("missing"), nullptr);
  EXPECT_EQ(f.find("__metadata__"), nullptr);

  // Values decode as written.
  const TensorInfo* w = f.find("model.w");
  float w5;
  std::memcpy(&w5, w->data + 5 * sizeof(float), sizeof w5);
  EXPECT_EQ(w5, 42.0f);
  const TensorInfo* b = f.find("model.b");
  uint16_t b1;
  std::memcpy(&b1, b->data + 2, 2);
  EXPECT_EQ(bf16_to_f32(b1), -0.5f);
  const TensorInfo* sc = f.find("scalar");
  EXPECT_EQ(sc->numel(), 1u);
  EXPECT_TRUE(sc->shape.empty());
  EXPECT_EQ(static_cast<int8_t>(sc->data[0]), -128);
}

TEST_F(SafetensorsTest, EveryDTypeString) {
  const std::vector<std::pair<std::string, size_t>> all = {
      {"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2},    {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
      {"U16", 2}, {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  std::vector<Spec> specs;
  for (const auto& [name, size] : all) {
    specs.push_back({"t_" + name, name, {3}, std::string(3 * size, '\x5a')});
  }
  const SafetensorsFile f = SafetensorsFile::open(write("all.safetensors", make_file(specs)));
  ASSERT_EQ(f.tensors().size(), all.size());
  for (const auto& [name, size] : all) {
    const TensorInfo* t = f.find("t_" + name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_STREQ(dtype_name(t->dtype), name.c_str());
    EXPECT_EQ(dtype_size(t->dtype), size);
    DType d;
    ASSERT_TRUE(parse_dtype(name, &d));
    EXPECT_EQ(d, t->dtype);
  }
  DType d = DType::F32;
  EXPECT_FALSE(parse_dtype("f32", &d));
  EXPECT_FALSE(parse_dtype("F8_E8M0", &d));
  EXPECT_EQ(d, DType::F32);
}

TEST_F(SafetensorsTest, ScalarAndZeroSizeTensors) {
  constexpr int64_t kHuge = int64_t{1} << 62;
  // Zero-size tensors own no bytes: they may sit anywhere in [0, data size], even at the end or
  // inside another tensor's range, and a zero dim makes even huge other dims fine.
  const std::string header = R"({
    "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
    "z": {"dtype": "BF16", "shape": [0, 5], "data_offsets": [4, 4]},
    "z_inside": {"dtype": "F32", "shape": [3, 0], "data_offsets": [2, 2]},
    "z_end": {"dtype": "F64", "shape": [)" +
                             std::to_string(kHuge) + ", " + std::to_string(kHuge) + ", 0" +
                             R"(], "data_offsets": [4, 4]},
    "z_rank1": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}})";
  const float one = 1.0f;
  const std::string path = write("z.safetensors", raw_file(header, bytes_of(std::vector{one})));
  const SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_EQ(f.tensors().size(), 5u);
  const TensorInfo& s = *f.find("s");
  EXPECT_EQ(s.numel(), 1u);
  EXPECT_EQ(s.nbytes, 4u);
  float v;
  std::memcpy(&v, s.data, 4);
  EXPECT_EQ(v, 1.0f);
  for (const char* name : {"z", "z_inside", "z_end", "z_rank1"}) {
    const TensorInfo* t = f.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->numel(), 0u) << name;
    EXPECT_EQ(t->nbytes, 0u) << name;
  }
}

TEST_F(SafetensorsTest, EmptyHeaderGapsAndWhitespace) {
  const SafetensorsFile empty = SafetensorsFile::open(write("e.safetensors", raw_file("{}")));
  EXPECT_TRUE(empty.tensors().empty());
  EXPECT_TRUE(empty.metadata().empty());

  // Gaps between tensors are allowed; leading whitespace too; order in the file is free.
  const std::string header = R"(  {"b": {"dtype": "U8", "shape": [2], "data_offsets": [10, 12]},
      "a": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}})";
  const SafetensorsFile f =
      SafetensorsFile::open(write("g.safetensors", raw_file(header, "0123456789ab----")));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.find("a")->data), 2), "34");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.find("b")->data), 2), "ab");
}

TEST_F(SafetensorsTest, MoveKeepsTensorPointersValid) {
  const std::string path =
      write("m.safetensors", make_file({{"x", "U8", {3}, "abc"}, {"y", "U8", {1}, "d"}}));
  SafetensorsFile f = SafetensorsFile::open(path);
  const TensorInfo* x = f.find("x");
  const SafetensorsFile g = std::move(f);
  EXPECT_EQ(g.find("x"), x);
  EXPECT_EQ(x->data[2], 'c');
}

// ---- SafetensorsFile: validation -------------------------------------------------------------

TEST_F(SafetensorsTest, TooShortAndBadHeaderLength) {
  const std::string empty = write("empty.safetensors", "");
  EXPECT_ERROR(SafetensorsFile::open(empty), empty, "too short");
  const std::string short7 = write("short.safetensors", std::string(7, '\0'));
  EXPECT_ERROR(SafetensorsFile::open(short7), short7, "too short");

  const std::string past = write("past.safetensors", u64le(100) + "{}");
  EXPECT_ERROR(SafetensorsFile::open(past), past, "exceeds the 2 bytes");
  const std::string huge = write("huge.safetensors", u64le(uint64_t{1} << 40) + "{}");
  EXPECT_ERROR(SafetensorsFile::open(huge), huge, "exceeds the limit");
  const std::string max = write("max.safetensors", u64le(~uint64_t{0}) + "{}");
  EXPECT_ERROR(SafetensorsFile::open(max), max, "exceeds the limit");
  const std::string zero = write("zero.safetensors", u64le(0));
  EXPECT_ERROR(SafetensorsFile::open(zero), zero, "invalid JSON");
}

TEST_F(SafetensorsTest, HeaderNotJsonObject) {
  expect_bad_header("{not json", "invalid JSON");
  expect_bad_header("{\"a\": 1} trailing", "invalid JSON");
  expect_bad_header("[]", "not a JSON object");
  expect_bad_header("\"str\"", "not a JSON object");
  expect_bad_header("{\"a\": 5}", "entry is not a JSON object");
  expect_bad_header("{\"__metadata__\": [1]}", "\"__metadata__\" is not a JSON object");
  // Invalid UTF-8 inside a string (a lone 0xff byte, an overlong encoding of '/').
  expect_bad_header("{\"a\xff\": {}}", "invalid JSON");
  expect_bad_header("{\"a\xc0\xaf\": {}}", "invalid JSON");
  // Absurd nesting is refused before it costs anything.
  expect_bad_header(
      "{\"__metadata__\": {\"k\": " + std::string(200, '[') + std::string(200, ']') + "}}",
      "nests deeper");
}

TEST_F(SafetensorsTest, DuplicateNamesAndKeys) {
  expect_bad_header(R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                        "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                    "duplicate tensor name 'a'");
  expect_bad_header(R"({"a": {"dtype": "U8", "dtype": "F32", "shape": [1],
                        "data_offsets": [0, 1]}})",
                    "duplicate key 'dtype'");
}

TEST_F(SafetensorsTest, EntryFieldErrors) {
  const auto entry = [](const std::string& body) { return "{\"w\": {" + body + "}}"; };
  const std::string shape = R"("shape": [2])";
  const std::string offs = R"("data_offsets": [0, 2])";
  const std::string dt = R"("dtype": "U8")";

  expect_bad_header(entry(shape + "," + offs), "tensor 'w': missing \"dtype\"");
  expect_bad_header(entry(dt + "," + offs), "tensor 'w': missing \"shape\"");
  expect_bad_header(entry(dt + "," + shape), "tensor 'w': missing \"data_offsets\"");

  expect_bad_header(entry(R"("dtype": 4,)" + shape + "," + offs), "\"dtype\" is not a string");
  expect_bad_header(entry(R"("dtype": "Q4_0",)" + shape + "," + offs),
                    "tensor 'w': unsupported dtype 'Q4_0'");
  expect_bad_header(entry(R"("dtype": "f32",)" + shape + "," + offs), "unsupported dtype 'f32'");

  expect_bad_header(entry(dt + R"(, "shape": 2,)" + offs), "\"shape\" is not an array");
  expect_bad_header(entry(dt + R"(, "shape": [2.0],)" + offs), "shape[0] is not an integer");
  expect_bad_header(entry(dt + R"(, "shape": ["2"],)" + offs), "shape[0] is not an integer");
  expect_bad_header(entry(dt + R"(, "shape": [1, -2],)" + offs), "shape[1] is negative");
  expect_bad_header(entry(dt + R"(, "shape": [9223372036854775808],)" + offs),
                    "shape[0] is too large");
  expect_bad_header(entry(dt + R"(, "shape": [1e3],)" + offs), "shape[0] is not an integer");

  expect_bad_header(entry(dt + "," + shape + R"(, "data_offsets": 0)"), "not an array of two");
  expect_bad_header(entry(dt + "," + shape + R"(, "data_offsets": [0])"), "not an array of two");
  expect_bad_header(entry(dt + "," + shape + R"(, "data_offsets": [0, 2, 4])"),
                    "not an array of two");
  expect_bad_header(entry(dt + "," + shape + R"(, "data_offsets": [0, 2.0])"),
                    "data_offsets[1] is not an integer");
  expect_bad_header(entry(dt + "," + shape + R"(, "data_offsets": [-2, 0])"), "negative");
  expect_bad_header(entry(dt + "," + shape + R"(, "data_offsets": [4, 2])"), "begin > end");
  expect_bad_header(entry(dt + "," + shape + R"(, "data_offsets": [0, 3])"),
                    "spans 3 bytes but U8 with this shape needs 2");
  // The same entry with consistent offsets opens.
  const std::string ok = write(
      "ok.safetensors",
      raw_file(entry(dt + "," + shape + R"(, "data_offsets": [62, 64])"), std::string(64, '\0')));
  EXPECT_NO_THROW(SafetensorsFile::open(ok));
}

TEST_F(SafetensorsTest, OffsetsBeyondDataSection) {
  const std::string header = R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})";
  const std::string path = write("short_data.safetensors", raw_file(header, std::string(15, 'x')));
  EXPECT_ERROR(SafetensorsFile::open(path), path, "extends past the 15-byte data section");
  // Offsets near 2^63 must not wrap around anything.
  expect_bad_header(
      R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [9223372036854775806, 9223372036854775807]}})",
      "extends past");
  expect_bad_header(
      R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 18446744073709551615]}})",
      "data_offsets[1] is too large");
}

TEST_F(SafetensorsTest, SizeOverflow) {
  // 2^32 * 2^32 elements: the element count overflows 64 bits.
  expect_bad_header(
      R"({"w": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})",
      "element count of the shape overflows");
  // 2^62 elements fit, 2^62 * 4 bytes don't.
  expect_bad_header(
      R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})",
      "byte size of the shape overflows");
  // 2^61 * 4 = 2^63 bytes fits in 64 bits but not in the file.
  expect_bad_header(
      R"({"w": {"dtype": "F32", "shape": [2305843009213693952], "data_offsets": [0, 8]}})",
      "needs 9223372036854775808");
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  expect_bad_header(R"({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                        "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}})",
                    "tensors 'a' and 'b' overlap");
  expect_bad_header(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]},
                        "b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                    "overlap");
  // Contained in an earlier, longer tensor that isn't the immediately preceding one.
  expect_bad_header(R"({"a": {"dtype": "U8", "shape": [20], "data_offsets": [0, 20]},
                        "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
                        "c": {"dtype": "U8", "shape": [2], "data_offsets": [10, 12]}})",
                    "overlap");
}

TEST_F(SafetensorsTest, TruncatedFiles) {
  const std::string good =
      make_file({{"a", "F32", {4, 4}, std::string(64, 'a')}, {"b", "U8", {3}, "bcd"}});
  const size_t header_len = good.size() - 67 - 8;
  // Cut inside the length field, inside the header, and inside the data.
  const std::string cut_len = write("cut_len.safetensors", good.substr(0, 5));
  EXPECT_ERROR(SafetensorsFile::open(cut_len), cut_len, "too short");
  const std::string cut_header =
      write("cut_header.safetensors", good.substr(0, 8 + header_len / 2));
  EXPECT_ERROR(SafetensorsFile::open(cut_header), cut_header, "truncated");
  const std::string cut_data = write("cut_data.safetensors", good.substr(0, good.size() - 1));
  EXPECT_ERROR(SafetensorsFile::open(cut_data), cut_data, "truncated");
  // ... and the uncut file opens.
  EXPECT_EQ(SafetensorsFile::open(write("good.safetensors", good)).tensors().size(), 2u);
}

TEST_F(SafetensorsTest, HostileNamesStayOnOneLine) {
  // A tensor name with a newline and control characters: the message escapes them.
  expect_bad_header(
      "{\"a\\nb\\u0001\": {\"dtype\": \"X\", \"shape\": [], \"data_offsets\": [0, 0]}}",
      "tensor 'a\\x0ab\\x01'");
}

// ---- Checkpoint ------------------------------------------------------------------------------

TEST_F(SafetensorsTest, CheckpointSingleFile) {
  write("model.safetensors", make_file({{"b", "U8", {1}, "b"}, {"a", "U8", {2}, "aa"}}));
  write("other.safetensors", make_file({{"ignored", "U8", {1}, "x"}}));  // not opened
  const Checkpoint c = Checkpoint::open(dir_);
  EXPECT_EQ(c.dir(), dir_);
  EXPECT_EQ(c.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(c.get("a").nbytes, 2u);
  EXPECT_EQ(c.find("ignored"), nullptr);
  EXPECT_ERROR(c.get("nope"), dir_, "tensor 'nope' not found");
}

TEST_F(SafetensorsTest, CheckpointShardedIndex) {
  write("model-00001-of-00002.safetensors",
        make_file({{"layer.0.w", "F32", {2}, bytes_of(std::vector<float>{1, 2})},
                   {"embed", "U8", {3}, "xyz"}}));
  write("model-00002-of-00002.safetensors",
        make_file({{"layer.1.w", "F32", {2}, bytes_of(std::vector<float>{3, 4})}}));
  write("stale.safetensors", make_file({{"embed", "U8", {3}, "old"}}));  // not in the index
  const json index = {{"metadata", {{"total_size", 19}}},
                      {"weight_map",
                       {{"layer.0.w", "model-00001-of-00002.safetensors"},
                        {"embed", "model-00001-of-00002.safetensors"},
                        {"layer.1.w", "model-00002-of-00002.safetensors"}}}};
  write("model.safetensors.index.json", index.dump(2));

  Checkpoint c = Checkpoint::open(dir_);
  EXPECT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(c.names(), (std::vector<std::string>{"embed", "layer.0.w", "layer.1.w"}));
  const TensorInfo& w1 = c.get("layer.1.w");
  EXPECT_EQ(fs::path(w1.file).filename(), "model-00002-of-00002.safetensors");
  float x;
  std::memcpy(&x, w1.data + 4, 4);
  EXPECT_EQ(x, 4.0f);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(c.get("embed").data), 3), "xyz");

  // Moving the checkpoint keeps every TensorInfo where it was.
  const Checkpoint moved = std::move(c);
  EXPECT_EQ(&moved.get("layer.1.w"), &w1);
  EXPECT_EQ(w1.data[0], bytes_of(std::vector<float>{3})[0]);
}

TEST_F(SafetensorsTest, CheckpointIndexErrors) {
  write("s1.safetensors", make_file({{"a", "U8", {1}, "a"}}));
  write("s2.safetensors", make_file({{"b", "U8", {1}, "b"}, {"a", "U8", {1}, "A"}}));
  const std::string ipath = write("model.safetensors.index.json", "");
  const auto index = [&](const json& j) { write("model.safetensors.index.json", j.dump()); };

  // A mapped name missing from its shard: the message names the tensor and the shard.
  index({{"weight_map", {{"a", "s1.safetensors"}, {"c", "s1.safetensors"}}}});
  EXPECT_ERROR(Checkpoint::open(dir_), "tensor 'c'", "'s1.safetensors' but that shard");
  // A shard that doesn't exist.
  index({{"weight_map", {{"a", "s1.safetensors"}, {"b", "s3.safetensors"}}}});
  EXPECT_ERROR(Checkpoint::open(dir_), "s3.safetensors", "No such file");
  // The same name in two opened shards.
  index({{"weight_map", {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}}}});
  EXPECT_ERROR(Checkpoint::open(dir_), "tensor 'a' appears in both", "s2.safetensors");
  // Malformed index files.
  write("model.safetensors.index.json", "{oops");
  EXPECT_ERROR(Checkpoint::open(dir_), ipath, "invalid JSON");
  index(json::array());
  EXPECT_ERROR(Checkpoint::open(dir_), ipath, "not a JSON object");
  index({{"metadata", json::object()}});
  EXPECT_ERROR(Checkpoint::open(dir_), ipath, "missing \"weight_map\"");
  index({{"weight_map", json::array()}});
  EXPECT_ERROR(Checkpoint::open(dir_), ipath, "\"weight_map\" is not a JSON object");
  index({{"weight_map", json::object()}});
  EXPECT_ERROR(Checkpoint::open(dir_), ipath, "empty");
  index({{"weight_map", {{"a", 1}}}});
  EXPECT_ERROR(Checkpoint::open(dir_), ipath, "entry for 'a' is not a string");
  index({{"weight_map", {{"a", "../s1.safetensors"}}}});
  EXPECT_ERROR(Checkpoint::open(dir_), ipath, "not a file inside the checkpoint directory");
  index({{"weight_map", {{"a", "/etc/passwd"}}}});
  EXPECT_ERROR(Checkpoint::open(dir_), ipath, "not a file inside the checkpoint directory");
  // A broken shard: the message names the shard.
  write("s1.safetensors", "abc");
  index({{"weight_map", {{"a", "s1.safetensors"}}}});
  EXPECT_ERROR(Checkpoint::open(dir_), "s1.safetensors", "too short");
}

TEST_F(SafetensorsTest, CheckpointAllShardsInDirectory) {
  write("b.safetensors", make_file({{"y", "U8", {1}, "y"}}));
  write("a.safetensors", make_file({{"x", "U8", {1}, "x"}}));
  write("notes.txt", "not a shard");
  const Checkpoint c = Checkpoint::open(dir_);
  ASSERT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(fs::path(c.shards()[0].path()).filename(), "a.safetensors");  // sorted
  EXPECT_EQ(c.names(), (std::vector<std::string>{"x", "y"}));

  write("c.safetensors", make_file({{"x", "U8", {1}, "X"}}));
  EXPECT_ERROR(Checkpoint::open(dir_), "tensor 'x' appears in both", "c.safetensors");
}

TEST_F(SafetensorsTest, CheckpointNoFiles) {
  EXPECT_ERROR(Checkpoint::open(dir_), dir_, "no safetensors files (expected model.safetensors");
  write("readme.md", "hi");
  EXPECT_ERROR(Checkpoint::open(dir_), dir_, "no safetensors files");
  const std::string missing = dir_ + "/nope";
  EXPECT_ERROR(Checkpoint::open(missing), missing, "No such file");
  const std::string file = write("file.txt", "x");
  EXPECT_ERROR(Checkpoint::open(file), file, "not a directory");
}

}  // namespace
}  // namespace moeflux
