#pragma once
// Loading and saving weights by name: a list of slots "name -> Matrix<T>" (built by hand or
// from a model's parameter visitor) against a safetensors file. Loading checks the whole
// list first and reports every missing, unexpected and misshapen tensor in one error, so a
// user fixing a name mapping sees all of it at once; nothing is modified unless everything
// fits.

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/tensor.hpp"
#include "sora/io/safetensors.hpp"

namespace sora::io {

// One named destination. A vector slot holds a (1, n) matrix and matches a 1-D tensor [n]
// (sora stores vectors as rows; PyTorch files store them 1-D); any other slot matches a
// 2-D tensor of exactly its shape.
template <class T>
struct TensorSlot {
  std::string name;
  Matrix<T>* value = nullptr;
  bool is_vector = false;

  Shape file_shape() const {
    if (is_vector) return Shape{static_cast<std::uint64_t>(value->size())};
    return Shape{static_cast<std::uint64_t>(value->rows()),
                 static_cast<std::uint64_t>(value->cols())};
  }
};

template <class T>
TensorSlot<T> slot(Param<T>& p) {
  p.require_fp32("a tensor file's slot");  // slots read and write the fp32 matrix
  return TensorSlot<T>{p.name, &p.value, p.is_vector};
}

// Slots for every parameter a visitor reaches: `visit(f)` must call f(Param<T>&) once per
// parameter (the shape of the model's parameter visitor).
template <class T, class Visit>
std::vector<TensorSlot<T>> slots_of(Visit&& visit) {
  std::vector<TensorSlot<T>> slots;
  visit([&](Param<T>& p) { slots.push_back(slot(p)); });
  return slots;
}

struct LoadOptions {
  bool allow_unexpected = false;  // tensors in the file that no slot wants are skipped
  bool allow_missing = false;     // slots the file lacks keep their values
};

struct LoadReport {
  std::vector<std::string> loaded;      // in slot order
  std::vector<std::string> missing;     // only when allow_missing
  std::vector<std::string> unexpected;  // only when allow_unexpected, in file order
};

// Reads every slot's tensor from `file`, converting from the file's dtype to T. Throws one
// sora::Error listing every problem (missing, unexpected, misshapen, duplicate slot names)
// before touching any slot.
template <class T>
LoadReport load_into(const SafetensorsFile& file, const std::vector<TensorSlot<T>>& slots,
                     const LoadOptions& options = {}) {
  LoadReport report;
  std::vector<std::string> problems;
  std::set<std::string, std::less<>> wanted;
  for (const TensorSlot<T>& s : slots) {
    SORA_CHECK(s.value != nullptr, "load_into: slot '", s.name, "' has no destination");
    if (!wanted.insert(s.name).second) {
      problems.push_back(detail::concat("slot '", s.name, "' is listed twice"));
      continue;
    }
    if (s.is_vector) {
      SORA_CHECK(s.value->rows() == 1, "load_into: vector slot '", s.name, "' is ",
                 shape_of(*s.value), ", not (1, n)");
    }
    const TensorInfo* t = file.find(s.name);
    if (t == nullptr) {
      if (options.allow_missing) {
        report.missing.push_back(s.name);
      } else {
        problems.push_back(detail::concat("missing tensor '", s.name, "' (expected ",
                                          shape_string(s.file_shape()), ")"));
      }
      continue;
    }
    if (t->shape != s.file_shape()) {
      problems.push_back(detail::concat("tensor '", s.name, "' has shape ", shape_string(t->shape),
                                        ", expected ", shape_string(s.file_shape())));
    }
  }
  for (const TensorInfo& t : file.tensors()) {
    if (wanted.count(t.name) != 0) continue;
    if (options.allow_unexpected) {
      report.unexpected.push_back(t.name);
    } else {
      problems.push_back(detail::concat("unexpected tensor '", t.name, "' ", shape_string(t.shape),
                                        " ", dtype_name(t.dtype)));
    }
  }
  if (!problems.empty()) {
    std::string message =
        detail::concat(file.source(), ": cannot load ", slots.size(), " tensors (", problems.size(),
                       problems.size() == 1 ? " problem):" : " problems):");
    for (const std::string& p : problems) message += "\n  " + p;
    throw Error(message);
  }
  for (const TensorSlot<T>& s : slots) {
    const TensorInfo* t = file.find(s.name);
    if (t == nullptr) continue;
    file.read<T>(*t, std::span<T>(s.value->data(), static_cast<std::size_t>(s.value->size())));
    report.loaded.push_back(s.name);
  }
  return report;
}

// Writes every slot (vectors 1-D) as `dtype`, atomically, with optional metadata. A NaN or an
// infinity in any slot is an error and writes nothing (SafetensorsWriter::require_finite).
template <class T>
void save_tensors(const std::filesystem::path& path, const std::vector<TensorSlot<T>>& slots,
                  Dtype dtype = native_dtype<T>(),
                  const std::map<std::string, std::string>& metadata = {}) {
  SafetensorsWriter writer;
  writer.require_finite();
  for (const auto& [key, value] : metadata) writer.set_metadata(key, value);
  for (const TensorSlot<T>& s : slots) {
    SORA_CHECK(s.value != nullptr, "save_tensors: slot '", s.name, "' has no source");
    if (s.is_vector) {
      writer.add_vector(s.name, *s.value, dtype);
    } else {
      writer.add(s.name, *s.value, dtype);
    }
  }
  writer.write(path);
}

}  // namespace sora::io
