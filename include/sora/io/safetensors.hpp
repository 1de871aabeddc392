#pragma once
// safetensors files (https://github.com/huggingface/safetensors), read and written without
// Python. Layout: an 8-byte little-endian header length N, N bytes of JSON header, then the
// data section. The header is an object mapping each tensor name to
// {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]} (byte offsets into
// the data section), plus an optional "__metadata__" object of string values.
//
// The reader treats every file as untrusted: the header is parsed by nlohmann/json's SAX
// interface straight into the tensor table (no document tree, nesting cut off at the depth
// the format needs), every size is checked for overflow before it is used, and the tensors
// must tile the data section exactly: no overlaps, no holes, nothing past the end. Any
// violation is a sora::Error that names the file and the problem. Files are memory-mapped,
// so opening a large file costs nothing until its tensors are read.
//
// The writer produces what the reader accepts and nothing else: header padded with spaces
// to a multiple of 8 bytes, tensors contiguous in header order, written atomically.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/tensor.hpp"
#include "sora/io/atomic_file.hpp"
#include "sora/io/dtype.hpp"
#include "sora/io/mapped_file.hpp"

namespace sora::io {

// The reference implementation's limit; a longer header is an attack, not a model.
inline constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;
// PyTorch's own limit on the number of dimensions.
inline constexpr std::size_t kSafetensorsMaxRank = 64;

using Shape = std::vector<std::uint64_t>;

// "[2, 3]"
inline std::string shape_string(std::span<const std::uint64_t> shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets into the data section, [begin, end)
  std::uint64_t end = 0;

  // Validated by the reader: never overflows for a tensor of an opened file.
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (std::uint64_t d : shape) n *= d;
    return n;
  }
  std::uint64_t nbytes() const { return end - begin; }
};

namespace st_detail {

// Builds the tensor table from SAX events. Nesting is at most 3 (root object -> tensor
// object -> shape array); anything deeper is rejected on sight, so a hostile header cannot
// make the parser build a deep or large tree.
class HeaderHandler {
 public:
  using json = nlohmann::json;

  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  std::string error;  // the first problem found; parsing stops there

  bool null() { return scalar("null"); }
  bool boolean(bool) { return scalar("a boolean"); }
  bool number_integer(json::number_integer_t v) {
    if (depth_ == 3 && v < 0) {
      return fail(field_context(), " contains the negative number ", v);
    }
    if (depth_ == 3) return number(static_cast<std::uint64_t>(v));
    return scalar("a number");
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (depth_ == 3) return number(v);
    return scalar("a number");
  }
  bool number_float(json::number_float_t, const std::string& text) {
    if (depth_ == 3) return fail(field_context(), " contains ", text, ", not an integer");
    return scalar("a number");
  }
  bool binary(json::binary_t&) { return scalar("binary data"); }

  bool string(std::string& s) {
    if (depth_ == 2 && in_metadata_) {
      metadata.emplace(field_, std::move(s));
      return true;
    }
    if (depth_ == 2 && field_ == "dtype") {
      const std::optional<Dtype> dtype = parse_dtype(s);
      if (!dtype) {
        // Valid in safetensors, but not floating-point weights sora could train.
        constexpr std::string_view other[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2"};
        const bool known = std::find(std::begin(other), std::end(other), s) != std::end(other);
        return fail("tensor '", current_.name, "': ", known ? "unsupported" : "unknown", " dtype '",
                    s, "' (sora reads F64, F32, F16, BF16 and lists I64, I32, I16, I8, U8, BOOL)");
      }
      current_.dtype = *dtype;
      return true;
    }
    return scalar("a string");
  }

  bool start_object(std::size_t) {
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    if (depth_ == 1) {
      depth_ = 2;
      in_metadata_ = key_ == "__metadata__";
      if (!in_metadata_) {
        current_ = TensorInfo{};
        current_.name = key_;
        seen_ = {};
      }
      return true;
    }
    return scalar("an object");
  }

  bool end_object() {
    if (depth_ == 2 && !in_metadata_) {
      const char* missing = !seen_[0]   ? "dtype"
                            : !seen_[1] ? "shape"
                            : !seen_[2] ? "data_offsets"
                                        : nullptr;
      if (missing != nullptr) {
        return fail("tensor '", current_.name, "': missing field '", missing, "'");
      }
      tensors.push_back(std::move(current_));
    }
    --depth_;
    return true;
  }

  bool key(std::string& k) {
    if (depth_ == 1) {
      // The writer refuses empty names (no framework produces them), so the reader does too.
      if (k.empty()) return fail("a tensor name is empty");
      if (!root_keys_.insert(k).second) return fail("duplicate entry '", k, "' in the header");
      key_ = std::move(k);
      return true;
    }
    if (in_metadata_) {
      if (metadata.count(k) != 0) return fail("duplicate metadata key '", k, "'");
      field_ = std::move(k);
      return true;
    }
    const int slot = k == "dtype" ? 0 : k == "shape" ? 1 : k == "data_offsets" ? 2 : -1;
    if (slot < 0) return fail("tensor '", current_.name, "': unknown field '", k, "'");
    if (seen_[static_cast<std::size_t>(slot)]) {
      return fail("tensor '", current_.name, "': duplicate field '", k, "'");
    }
    seen_[static_cast<std::size_t>(slot)] = true;
    field_ = std::move(k);
    return true;
  }

  bool start_array(std::size_t) {
    if (depth_ == 2 && !in_metadata_ && (field_ == "shape" || field_ == "data_offsets")) {
      depth_ = 3;
      return true;
    }
    return scalar("an array");
  }

  bool end_array() {
    if (field_ == "data_offsets" && offsets_.size() != 2) {
      return fail("tensor '", current_.name, "': data_offsets must hold 2 integers, not ",
                  offsets_.size());
    }
    if (field_ == "data_offsets") {
      current_.begin = offsets_[0];
      current_.end = offsets_[1];
      offsets_.clear();
    }
    depth_ = 2;
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    // Keep the first problem: a SAX callback that returned false is reported as well.
    if (error.empty()) error = detail::concat("header is not valid JSON: ", e.what());
    return false;
  }

 private:
  template <class... Parts>
  bool fail(Parts&&... parts) {
    if (error.empty()) error = detail::concat(std::forward<Parts>(parts)...);
    return false;
  }

  std::string field_context() const {
    return detail::concat("tensor '", current_.name, "': ", field_);
  }

  bool number(std::uint64_t v) {
    if (field_ == "shape") {
      // PyTorch sizes are int64; larger dimensions cannot come from a real tensor.
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        return fail(field_context(), " has the dimension ", v, ", beyond int64");
      }
      if (current_.shape.size() == kSafetensorsMaxRank) {
        return fail(field_context(), " has more than ", kSafetensorsMaxRank, " dimensions");
      }
      current_.shape.push_back(v);
      return true;
    }
    if (offsets_.size() == 2) {
      return fail("tensor '", current_.name, "': data_offsets must hold 2 integers, not more");
    }
    offsets_.push_back(v);
    return true;
  }

  // A value of the wrong kind (`found`) at the current position.
  bool scalar(const char* found) {
    switch (depth_) {
      case 0:
        return fail("header is not a JSON object (found ", found, ")");
      case 1:
        if (key_ == "__metadata__") {
          return fail("__metadata__ must be an object of strings (found ", found, ")");
        }
        return fail("entry '", key_, "' must be an object (found ", found, ")");
      case 2:
        if (in_metadata_) {
          return fail("metadata value of '", field_, "' must be a string (found ", found, ")");
        }
        if (field_ == "dtype")
          return fail(field_context(), " must be a string (found ", found, ")");
        return fail(field_context(), " must be an array of integers (found ", found, ")");
      default:
        return fail(field_context(), " must contain integers only (found ", found, ")");
    }
  }

  int depth_ = 0;  // open containers: 1 root, 2 a tensor or __metadata__, 3 shape / offsets
  bool in_metadata_ = false;
  std::string key_;    // current root key (tensor name)
  std::string field_;  // current key inside a tensor entry or __metadata__
  TensorInfo current_;
  std::vector<std::uint64_t> offsets_;
  std::array<bool, 3> seen_{};  // dtype, shape, data_offsets
  std::set<std::string, std::less<>> root_keys_;
};

inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  return !__builtin_mul_overflow(a, b, &out);
}

}  // namespace st_detail

// A parsed, validated safetensors file. Copies are cheap and share the underlying bytes
// (a memory map or an owned buffer), which live as long as any copy or view needs them.
class SafetensorsFile {
 public:
  // Memory-maps the file at `path` and validates its header and layout.
  static SafetensorsFile open(const std::filesystem::path& path) {
    auto mapped = std::make_shared<MappedFile>(path);
    const std::span<const std::byte> bytes = mapped->bytes();
    return SafetensorsFile(std::move(mapped), bytes, path.string());
  }

  // Parses bytes held in memory (taking ownership); `source` names them in error messages.
  static SafetensorsFile from_bytes(std::vector<std::byte> bytes, std::string source = "<memory>") {
    auto owned = std::make_shared<std::vector<std::byte>>(std::move(bytes));
    const std::span<const std::byte> view(owned->data(), owned->size());
    return SafetensorsFile(std::move(owned), view, std::move(source));
  }

  const std::string& source() const { return source_; }
  // In data order, which is header order for files sora writes.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Offset of the data section from the start of the file (8 + header length).
  std::size_t data_offset() const { return data_begin_; }
  std::size_t file_size() const { return bytes_.size(); }

  const TensorInfo* find(std::string_view name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const TensorInfo& info(std::string_view name) const {
    const TensorInfo* t = find(name);
    SORA_CHECK(t != nullptr, source_, ": no tensor named '", name, "'");
    return *t;
  }

  // The tensor's raw little-endian bytes.
  std::span<const std::byte> raw(const TensorInfo& t) const {
    return bytes_.subspan(data_begin_ + static_cast<std::size_t>(t.begin),
                          static_cast<std::size_t>(t.nbytes()));
  }

  // Converts the tensor's values (any rank, row-major) into `out`, whose length must be
  // numel. Narrowing (F64 -> float) rounds to nearest.
  template <class T>
  void read(const TensorInfo& t, std::span<T> out) const {
    SORA_CHECK(out.size() == t.numel(), source_, ": tensor '", t.name, "' has ", t.numel(),
               " elements, the destination ", out.size());
    SORA_CHECK(is_floating(t.dtype), source_, ": tensor '", t.name, "' is ", dtype_name(t.dtype),
               " (integers), not floating-point values");
    decode_values<T>(t.dtype, raw(t).data(), out.data(), out.size());
  }

  template <class T>
  std::vector<T> read_flat(std::string_view name) const {
    const TensorInfo& t = info(name);
    std::vector<T> out(static_cast<std::size_t>(t.numel()));
    read<T>(t, std::span<T>(out));
    return out;
  }

  // A copy as a matrix: a 2-D tensor (r, c) -> (r, c); a 1-D tensor [n] -> (1, n), sora's
  // vector convention; a scalar -> (1, 1). Higher ranks have no obvious matrix shape: read
  // them flat.
  template <class T>
  Matrix<T> matrix(std::string_view name) const {
    const TensorInfo& t = info(name);
    const auto [rows, cols] = matrix_shape(t);
    Matrix<T> m(rows, cols);
    read<T>(t, std::span<T>(m.data(), static_cast<std::size_t>(m.size())));
    return m;
  }

  // True when the tensor can be viewed in place as T: the dtype is T's own and the bytes
  // are aligned for T (always so for files sora writes; see SafetensorsWriter).
  template <class T>
  bool viewable(const TensorInfo& t) const {
    return t.dtype == native_dtype<T>() && t.shape.size() <= 2 &&
           reinterpret_cast<std::uintptr_t>(raw(t).data()) % alignof(T) == 0;
  }

  // A zero-copy view into the file's bytes, valid while this object (or a copy) lives.
  template <class T>
  ConstMatrixMap<T> view(std::string_view name) const {
    const TensorInfo& t = info(name);
    SORA_CHECK(t.dtype == native_dtype<T>(), source_, ": tensor '", t.name, "' is ",
               dtype_name(t.dtype), "; only ", dtype_name(native_dtype<T>()),
               " can be viewed as this type without conversion (use matrix<T>())");
    const auto [rows, cols] = matrix_shape(t);
    SORA_CHECK(viewable<T>(t), source_, ": tensor '", t.name,
               "' is not aligned for a zero-copy view (use matrix<T>())");
    return ConstMatrixMap<T>(reinterpret_cast<const T*>(raw(t).data()), rows, cols);
  }

 private:
  SafetensorsFile(std::shared_ptr<const void> owner, std::span<const std::byte> bytes,
                  std::string source)
      : owner_(std::move(owner)), bytes_(bytes), source_(std::move(source)) {
    parse();
  }

  std::pair<Index, Index> matrix_shape(const TensorInfo& t) const {
    SORA_CHECK(t.shape.size() <= 2, source_, ": tensor '", t.name, "' has shape ",
               shape_string(t.shape), "; only tensors of rank 0, 1 or 2 read as a matrix");
    if (t.shape.empty()) return {1, 1};
    if (t.shape.size() == 1) return {1, static_cast<Index>(t.shape[0])};
    return {static_cast<Index>(t.shape[0]), static_cast<Index>(t.shape[1])};
  }

  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    detail::throw_error(source_, ": ", std::forward<Parts>(parts)...);
  }

  void parse() {
    const std::size_t size = bytes_.size();
    if (size < 8) fail("file is ", size, " bytes, too short for the 8-byte header length");
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, bytes_.data(), 8);
    if (header_len > kSafetensorsMaxHeaderBytes) {
      fail("header length ", header_len, " exceeds the limit of ", kSafetensorsMaxHeaderBytes,
           " bytes");
    }
    if (header_len > size - 8) {
      fail("header length ", header_len, " runs past the end of the file (", size - 8,
           " bytes follow the length field)");
    }
    data_begin_ = 8 + static_cast<std::size_t>(header_len);
    const auto* text = reinterpret_cast<const char*>(bytes_.data() + 8);

    // nlohmann/json's lexer takes a NUL byte for the end of the input and would accept
    // anything after it; JSON allows no raw NUL anywhere, so reject it up front.
    if (std::memchr(text, 0, static_cast<std::size_t>(header_len)) != nullptr) {
      fail("header is not valid JSON: it contains a NUL byte");
    }
    st_detail::HeaderHandler handler;
    const bool ok = nlohmann::json::sax_parse(text, text + header_len, &handler);
    if (!ok || !handler.error.empty()) {
      fail(handler.error.empty() ? std::string("header is not valid JSON") : handler.error);
    }
    tensors_ = std::move(handler.tensors);
    metadata_ = std::move(handler.metadata);
    check_layout(size - data_begin_);
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  }

  void check_layout(std::uint64_t data_size) {
    for (const TensorInfo& t : tensors_) {
      std::uint64_t numel = 1;
      for (std::uint64_t d : t.shape) {
        if (!st_detail::checked_mul(numel, d, numel)) {
          fail("tensor '", t.name, "': shape ", shape_string(t.shape), " overflows 64 bits");
        }
      }
      std::uint64_t nbytes = 0;
      if (!st_detail::checked_mul(numel, dtype_size(t.dtype), nbytes)) {
        fail("tensor '", t.name, "': shape ", shape_string(t.shape), " of ", dtype_name(t.dtype),
             " overflows 64 bits in bytes");
      }
      if (t.end < t.begin) {
        fail("tensor '", t.name, "': data_offsets [", t.begin, ", ", t.end,
             "] end before they begin");
      }
      if (t.end - t.begin != nbytes) {
        fail("tensor '", t.name, "': shape ", shape_string(t.shape), " of ", dtype_name(t.dtype),
             " needs ", nbytes, " bytes but data_offsets [", t.begin, ", ", t.end, "] span ",
             t.end - t.begin);
      }
      if (t.end > data_size) {
        fail("tensor '", t.name, "': data_offsets [", t.begin, ", ", t.end,
             "] run past the end of the data section (", data_size, " bytes)");
      }
    }
    // The tensors must tile the data section: sorted by offset, each begins where the
    // previous one ended. (Zero-size tensors sort first at their offset and fit anywhere.)
    std::stable_sort(tensors_.begin(), tensors_.end(),
                     [](const TensorInfo& a, const TensorInfo& b) {
                       return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                     });
    std::uint64_t covered = 0;
    const TensorInfo* previous = nullptr;
    for (const TensorInfo& t : tensors_) {
      if (t.begin < covered) {
        fail("tensors '", previous->name, "' and '", t.name, "' overlap (bytes [", previous->begin,
             ", ", previous->end, ") and [", t.begin, ", ", t.end, "))");
      }
      if (t.begin > covered) {
        fail("bytes [", covered, ", ", t.begin, ") of the data section belong to no tensor (a ",
             "hole before '", t.name, "')");
      }
      covered = t.end;
      previous = &t;
    }
    if (covered != data_size) {
      fail("the last ", data_size - covered, " bytes of the data section belong to no tensor");
    }
  }

  std::shared_ptr<const void> owner_;
  std::span<const std::byte> bytes_;
  std::string source_;
  std::size_t data_begin_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors, then writes them as one safetensors file. Values are converted to the
// requested dtype when added. Tensors are laid out in order of decreasing element size
// (stable otherwise): with the header padded to 8 bytes, every tensor then starts at a
// multiple of its own element size, so a reader can view it in place.
class SafetensorsWriter {
 public:
  void set_metadata(std::string key, std::string value) {
    metadata_.insert_or_assign(std::move(key), std::move(value));
  }

  // Model files (checkpoints, adapters, caches) must never hold a NaN or an infinity: a
  // diverged run would otherwise replace a good file with a useless one. With this on, write()
  // refuses, naming the first such value, before it creates any file.
  void require_finite(bool on = true) { require_finite_ = on; }

  // A matrix-like value with an explicit shape (row-major order of its elements).
  template <class Derived>
  void add(std::string name, const Eigen::MatrixBase<Derived>& values, Dtype dtype, Shape shape) {
    std::uint64_t numel = 1;
    for (std::uint64_t d : shape) {
      SORA_CHECK(st_detail::checked_mul(numel, d, numel), "safetensors: tensor '", name,
                 "': shape ", shape_string(shape), " overflows");
    }
    SORA_CHECK(numel == static_cast<std::uint64_t>(values.size()), "safetensors: tensor '", name,
               "': shape ", shape_string(shape), " holds ", numel, " elements but the value ",
               shape_of(values), " has ", values.size());
    const std::size_t width = dtype_size(dtype);
    std::vector<std::byte> bytes(static_cast<std::size_t>(numel) * width);
    std::size_t k = 0;
    // Row by row whatever the storage order, so column-major inputs come out right too.
    for (Index i = 0; i < values.rows(); ++i) {
      for (Index j = 0; j < values.cols(); ++j) {
        const auto v = values.derived().coeff(i, j);
        if (require_finite_ && first_non_finite_.empty() &&
            !std::isfinite(static_cast<double>(v))) {
          first_non_finite_ = detail::concat("tensor '", name, "' holds ", static_cast<double>(v),
                                             " at (", i, ", ", j, ")");
        }
        encode_value(dtype, v, bytes.data() + width * k++);
      }
    }
    add_raw(std::move(name), dtype, std::move(shape), std::move(bytes));
  }

  // A matrix as a 2-D tensor (rows, cols).
  template <class Derived>
  void add(std::string name, const Eigen::MatrixBase<Derived>& values, Dtype dtype) {
    add(std::move(name), values, dtype,
        Shape{static_cast<std::uint64_t>(values.rows()),
              static_cast<std::uint64_t>(values.cols())});
  }

  // Any matrix-like value as a 1-D tensor [size] (biases, gates, LayerNorm scales).
  template <class Derived>
  void add_vector(std::string name, const Eigen::MatrixBase<Derived>& values, Dtype dtype) {
    add(std::move(name), values, dtype, Shape{static_cast<std::uint64_t>(values.size())});
  }

  // A parameter under its own name: 1-D when it is a vector, 2-D otherwise.
  template <class T>
  void add(const Param<T>& p, Dtype dtype = native_dtype<T>()) {
    if (p.is_vector) {
      add_vector(p.name, p.value, dtype);
    } else {
      add(p.name, p.value, dtype);
    }
  }

  // Bytes already in `dtype`'s little-endian encoding.
  void add_raw(std::string name, Dtype dtype, Shape shape, std::vector<std::byte> bytes) {
    SORA_CHECK(!name.empty(), "safetensors: a tensor name must not be empty");
    SORA_CHECK(name != "__metadata__",
               "safetensors: '__metadata__' is reserved, not a tensor name");
    SORA_CHECK(std::none_of(entries_.begin(), entries_.end(),
                            [&](const Entry& e) { return e.name == name; }),
               "safetensors: duplicate tensor name '", name, "'");
    SORA_CHECK(shape.size() <= kSafetensorsMaxRank, "safetensors: tensor '", name, "' has rank ",
               shape.size(), " > ", kSafetensorsMaxRank);
    std::uint64_t numel = 1;
    for (std::uint64_t d : shape) {
      SORA_CHECK(d <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) &&
                     st_detail::checked_mul(numel, d, numel),
                 "safetensors: tensor '", name, "': shape ", shape_string(shape), " overflows");
    }
    SORA_CHECK(numel * dtype_size(dtype) == bytes.size(), "safetensors: tensor '", name,
               "': shape ", shape_string(shape), " of ", dtype_name(dtype), " needs ",
               numel * dtype_size(dtype), " bytes, got ", bytes.size());
    entries_.push_back(Entry{std::move(name), dtype, std::move(shape), std::move(bytes)});
  }

  std::size_t size() const { return entries_.size(); }

  // The JSON header, padded with spaces to a multiple of 8 bytes.
  std::string header() const {
    nlohmann::ordered_json root = nlohmann::ordered_json::object();
    if (!metadata_.empty()) root["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const Entry* e : layout()) {
      const std::uint64_t end = offset + e->bytes.size();
      root[e->name] = {{"dtype", std::string(dtype_name(e->dtype))},
                       {"shape", e->shape},
                       {"data_offsets", {offset, end}}};
      offset = end;
    }
    std::string text;
    try {
      text = root.dump();
    } catch (const nlohmann::json::exception& e) {
      // Names and metadata must be valid UTF-8 to be JSON strings.
      detail::throw_error("safetensors: cannot encode the header: ", e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  }

  // The whole file in memory.
  std::vector<std::byte> bytes() const {
    const std::string head = header();
    std::vector<std::byte> out(8 + head.size());
    const std::uint64_t n = head.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, head.data(), head.size());
    for (const Entry* e : layout()) out.insert(out.end(), e->bytes.begin(), e->bytes.end());
    return out;
  }

  // Writes the file atomically (temporary file + rename): never a torn file at `path`.
  void write(const std::filesystem::path& path) const {
    SORA_CHECK(first_non_finite_.empty(), "refusing to write '", path.string(),
               "': ", first_non_finite_, ", not a finite number (did training diverge?)");
    const std::string head = header();
    const std::uint64_t n = head.size();
    AtomicFileWriter out(path);
    out.write(&n, 8);
    out.write(head);
    for (const Entry* e : layout()) out.write(e->bytes.data(), e->bytes.size());
    out.commit();
  }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    Shape shape;
    std::vector<std::byte> bytes;
  };

  std::vector<const Entry*> layout() const {
    std::vector<const Entry*> order;
    order.reserve(entries_.size());
    for (const Entry& e : entries_) order.push_back(&e);
    std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
      return dtype_size(a->dtype) > dtype_size(b->dtype);
    });
    return order;
  }

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
  bool require_finite_ = false;
  std::string first_non_finite_;  // the first value require_finite() refuses, described
};

}  // namespace sora::io
