#include "core/quant_format.hpp"

#include "core/error.hpp"

namespace moeflux {

std::string format_name(QuantFormat fmt) {
  switch (fmt.kind) {
    case QuantKind::F32: return "f32";
    case QuantKind::F16: return "f16";
    case QuantKind::BF16: return "bf16";
    case QuantKind::Q8_0: return "q8_0";
    case QuantKind::Affine:
      if (fmt == QuantFormat::q4()) return "q4";
      return "affine" + std::to_string(fmt.bits) + "g" + std::to_string(fmt.group);
  }
  return "?";
}

QuantFormat parse_format(const std::string& name) {
  if (name == "f32") return QuantFormat::f32();
  if (name == "f16") return QuantFormat::f16();
  if (name == "bf16") return QuantFormat::bf16();
  if (name == "q8_0") return QuantFormat::q8_0();
  if (name == "q4") return QuantFormat::q4();
  int bits = 0, group = 0;
  char tail = 0;
  if (std::sscanf(name.c_str(), "affine%dg%d%c", &bits, &group, &tail) == 2 &&
      (bits == 4 || bits == 8) && (group == 32 || group == 64 || group == 128)) {
    return QuantFormat::affine(bits, group);
  }
  fail("unknown quant format '" + name + "' (expected f32, f16, bf16, q8_0, q4 or affine<4|8>g<32|64|128>)");
}

bool format_accepts_cols(QuantFormat fmt, size_t cols) {
  if (cols == 0) return false;
  switch (fmt.kind) {
    case QuantKind::F32:
    case QuantKind::F16:
    case QuantKind::BF16: return true;
    case QuantKind::Q8_0: return cols % 32 == 0;
    case QuantKind::Affine:
      return (fmt.bits == 4 || fmt.bits == 8) && fmt.group > 0 && cols % fmt.group == 0 &&
             (cols * fmt.bits) % 32 == 0;
  }
  return false;
}

size_t row_data_bytes(QuantFormat fmt, size_t cols) {
  switch (fmt.kind) {
    case QuantKind::F32: return cols * 4;
    case QuantKind::F16:
    case QuantKind::BF16: return cols * 2;
    case QuantKind::Q8_0: return cols;
    case QuantKind::Affine: return cols * fmt.bits / 8;
  }
  return 0;
}

size_t row_scale_bytes(QuantFormat fmt, size_t cols) {
  if (fmt.kind == QuantKind::Q8_0 || fmt.kind == QuantKind::Affine) return cols / fmt.group * 2;
  return 0;
}

size_t row_bias_bytes(QuantFormat fmt, size_t cols) {
  return fmt.kind == QuantKind::Affine ? cols / fmt.group * 2 : 0;
}

MatrixLayout matrix_layout(QuantFormat fmt, size_t rows, size_t cols) {
  MatrixLayout l;
  l.data_bytes = rows * row_data_bytes(fmt, cols);
  l.scales_offset = l.data_bytes;
  l.scales_bytes = rows * row_scale_bytes(fmt, cols);
  l.biases_offset = l.scales_offset + l.scales_bytes;
  l.biases_bytes = rows * row_bias_bytes(fmt, cols);
  l.total_bytes = l.biases_offset + l.biases_bytes;
  return l;
}

MatrixView MatrixView::from_record(QuantFormat fmt, size_t rows, size_t cols, const uint8_t* base) {
  const MatrixLayout l = matrix_layout(fmt, rows, cols);
  MatrixView v;
  v.fmt = fmt;
  v.rows = rows;
  v.cols = cols;
  v.data = base + l.data_offset;
  v.scales = l.scales_bytes ? base + l.scales_offset : nullptr;
  v.biases = l.biases_bytes ? base + l.biases_offset : nullptr;
  return v;
}

MatrixView MatrixView::row_slice(size_t begin, size_t n) const {
  MatrixView v = *this;
  v.rows = n;
  v.data = data + begin * row_data_bytes(fmt, cols);
  if (scales) v.scales = scales + begin * row_scale_bytes(fmt, cols);
  if (biases) v.biases = biases + begin * row_bias_bytes(fmt, cols);
  return v;
}

}  // namespace moeflux
