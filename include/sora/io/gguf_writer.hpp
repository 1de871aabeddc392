#pragma once
// A writer of GGUF files (the format of llama.cpp and ggml), version 3, for what sora exports:
// a few metadata values and float32 tensors.
//
// Layout (little-endian):
//   "GGUF"  uint32 version = 3  uint64 tensor count  uint64 metadata count
//   metadata: key (uint64 length + bytes), uint32 value type, value
//   tensor infos: name, uint32 dimension count, uint64 dims (innermost first, i.e. a row-major
//                 (rows, cols) matrix is written as [cols, rows]), uint32 ggml type (0 = F32),
//                 uint64 offset of the data from the start of the data section
//   padding to the alignment (32), then each tensor's data, each starting on the alignment.
//
// The file is written through a temporary and renamed (io/atomic_file.hpp); a tensor that is
// not finite is refused before anything is written.

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/io/atomic_file.hpp"
#include "sora/io/dtype.hpp"

namespace sora::io {

class GgufWriter {
 public:
  static constexpr std::uint32_t kVersion = 3;
  static constexpr std::uint64_t kAlignment = 32;  // GGUF's default (general.alignment)

  void add_string(const std::string& key, const std::string& value) {
    begin_value(key, kTypeString);
    put_string(metadata_, value);
  }
  void add_float32(const std::string& key, float value) {
    begin_value(key, kTypeFloat32);
    put(metadata_, value);
  }
  void add_uint32(const std::string& key, std::uint32_t value) {
    begin_value(key, kTypeUint32);
    put(metadata_, value);
  }

  // A (rows, cols) matrix, stored row-major as float32; GGUF's dims are [cols, rows].
  template <class T>
  void add_matrix(const std::string& name, const Matrix<T>& value) {
    SORA_CHECK(value.allFinite(), "GGUF: tensor '", name, "' holds a value that is not finite");
    for (const auto& t : tensors_)
      SORA_CHECK(t.name != name, "GGUF: tensor '", name, "' is added twice");
    Tensor t;
    t.name = name;
    t.rows = static_cast<std::uint64_t>(value.rows());
    t.cols = static_cast<std::uint64_t>(value.cols());
    t.data.resize(static_cast<std::size_t>(value.size()));
    for (Index r = 0; r < value.rows(); ++r)
      for (Index c = 0; c < value.cols(); ++c)
        t.data[static_cast<std::size_t>(r * value.cols() + c)] = static_cast<float>(value(r, c));
    tensors_.push_back(std::move(t));
  }

  std::size_t tensor_count() const { return tensors_.size(); }

  void write(const std::filesystem::path& path) const {
    std::string out;
    put(out, std::uint32_t{0x46554747});  // "GGUF" read as a little-endian uint32
    put(out, kVersion);
    put(out, static_cast<std::uint64_t>(tensors_.size()));
    put(out, metadata_count_);
    out += metadata_;
    std::uint64_t offset = 0;
    for (const auto& t : tensors_) {
      put_string(out, t.name);
      put(out, std::uint32_t{2});
      put(out, t.cols);  // innermost dimension first
      put(out, t.rows);
      put(out, std::uint32_t{0});  // GGML_TYPE_F32
      put(out, offset);
      offset = aligned(offset + t.data.size() * sizeof(float));
    }
    out.resize(static_cast<std::size_t>(aligned(out.size())), '\0');
    const std::size_t data_start = out.size();
    for (const auto& t : tensors_) {
      const std::size_t bytes = t.data.size() * sizeof(float);
      const std::size_t at = out.size();
      out.resize(at + bytes);
      std::memcpy(out.data() + at, t.data.data(), bytes);
      out.resize(data_start + static_cast<std::size_t>(aligned(out.size() - data_start)), '\0');
    }
    write_file_atomic(path, out);
  }

 private:
  static constexpr std::uint32_t kTypeUint32 = 4;
  static constexpr std::uint32_t kTypeFloat32 = 6;
  static constexpr std::uint32_t kTypeString = 8;

  struct Tensor {
    std::string name;
    std::uint64_t rows = 0, cols = 0;
    std::vector<float> data;  // (rows, cols) row-major
  };

  static std::uint64_t aligned(std::uint64_t n) {
    return (n + kAlignment - 1) / kAlignment * kAlignment;
  }
  // GGUF is little-endian: the host's bytes as they are (io/dtype.hpp refuses other hosts).
  template <class V>
  static void put(std::string& out, V value) {
    char bytes[sizeof(V)];
    std::memcpy(bytes, &value, sizeof(V));
    out.append(bytes, sizeof(V));
  }
  static void put_string(std::string& out, const std::string& s) {
    put(out, static_cast<std::uint64_t>(s.size()));
    out += s;
  }
  void begin_value(const std::string& key, std::uint32_t type) {
    SORA_CHECK(!key.empty(), "GGUF: a metadata key is empty");
    put_string(metadata_, key);
    put(metadata_, type);
    ++metadata_count_;
  }

  std::string metadata_;  // the encoded key-value pairs
  std::uint64_t metadata_count_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace sora::io
