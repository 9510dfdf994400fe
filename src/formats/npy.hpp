// NumPy .npy files (format version 1.0), little-endian, C order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moeflux {

// Writes float32 data of `shape` (core/output_file.hpp: a regular file atomically, a FIFO or
// device in place). Throws moeflux::Error.
void write_npy_f32(const std::string& path, const std::vector<size_t>& shape, const float* data);

struct NpyArray {
  std::vector<size_t> shape;
  std::vector<double> values;  // converted from '<f4' or '<f8'
};

// Reads a float32 or float64 C-order array. Throws moeflux::Error on anything else.
NpyArray read_npy(const std::string& path);

}  // namespace moeflux
