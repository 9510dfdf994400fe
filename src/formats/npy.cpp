#include "formats/npy.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "core/output_file.hpp"

namespace moeflux {

void write_npy_f32(const std::string& path, const std::vector<size_t>& shape, const float* data) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  size_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? ", " : "");
    n *= shape[i];
  }
  dict += "), }";
  // Magic (6) + version (2) + header length (2) + dict, padded with spaces to a multiple of 64,
  // ending in '\n'.
  size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  const uint16_t hlen = static_cast<uint16_t>(dict.size());

  std::string head("\x93NUMPY\x01\x00", 8);  // magic, format version 1.0
  head += static_cast<char>(hlen & 0xff);    // header length, little-endian
  head += static_cast<char>(hlen >> 8);
  write_output_file(
      path, {head, dict, std::string_view(reinterpret_cast<const char*>(data), n * sizeof(float))});
}

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open");
  char head[10];
  if (!in.read(head, 10) || std::memcmp(head, "\x93NUMPY", 6) != 0) fail(path + ": not a .npy file");
  size_t hlen = static_cast<unsigned char>(head[8]) | (static_cast<unsigned char>(head[9]) << 8);
  if (head[6] != 1) {  // version 2/3: 4-byte header length
    char more[2];
    if (!in.read(more, 2)) fail(path + ": truncated header");
    hlen |= (static_cast<size_t>(static_cast<unsigned char>(more[0])) << 16) |
            (static_cast<size_t>(static_cast<unsigned char>(more[1])) << 24);
  }
  std::string dict(hlen, '\0');
  if (!in.read(dict.data(), static_cast<std::streamsize>(hlen))) fail(path + ": truncated header");
  size_t elem = 0;
  if (dict.find("'<f4'") != std::string::npos) elem = 4;
  else if (dict.find("'<f8'") != std::string::npos) elem = 8;
  else fail(path + ": only little-endian float32/float64 arrays are supported");
  if (dict.find("'fortran_order': False") == std::string::npos) fail(path + ": Fortran order unsupported");
  const size_t lp = dict.find("'shape': ("), rp = dict.find(')', lp);
  if (lp == std::string::npos || rp == std::string::npos) fail(path + ": no shape in header");
  NpyArray a;
  std::stringstream ss(dict.substr(lp + 10, rp - lp - 10));
  std::string tok;
  size_t n = 1;
  while (std::getline(ss, tok, ',')) {
    if (tok.find_first_not_of(' ') == std::string::npos) continue;
    a.shape.push_back(std::stoul(tok));
    n *= a.shape.back();
  }
  a.values.resize(n);
  std::vector<char> raw(n * elem);
  if (!in.read(raw.data(), static_cast<std::streamsize>(raw.size()))) fail(path + ": truncated data");
  for (size_t i = 0; i < n; ++i) {
    if (elem == 4) {
      float f;
      std::memcpy(&f, raw.data() + 4 * i, 4);
      a.values[i] = f;
    } else {
      std::memcpy(&a.values[i], raw.data() + 8 * i, 8);
    }
  }
  return a;
}

}  // namespace moeflux
