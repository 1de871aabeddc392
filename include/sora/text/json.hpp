#pragma once
// Strict field access for tokenizer.json: every missing field, wrong type or unsupported value
// becomes a sora::Error naming the file, the JSON path ($.model.vocab...) and what was
// expected, never a nlohmann exception or a silent default.

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sora/core/error.hpp>
#include <string>

namespace sora::text::json {

using Json = nlohmann::json;

// Where a value sits: the file's name (for messages) and its JSON path.
struct Where {
  std::string file;
  std::string path;
  Where operator/(const std::string& key) const { return {file, path + "." + key}; }
  Where operator[](std::size_t i) const { return {file, path + "[" + std::to_string(i) + "]"}; }
};

template <class... Parts>
[[noreturn]] void fail(const Where& at, Parts&&... parts) {
  ::sora::detail::throw_error(at.file, ": ", at.path, ": ", std::forward<Parts>(parts)...);
}

inline const char* type_name(const Json& j) {
  return j.type_name();
}

inline const Json& object(const Json& j, const Where& at) {
  if (!j.is_object()) fail(at, "expected an object, found ", type_name(j));
  return j;
}

inline const Json& array(const Json& j, const Where& at) {
  if (!j.is_array()) fail(at, "expected an array, found ", type_name(j));
  return j;
}

// The field `key` of object j; missing is an error.
inline const Json& field(const Json& j, const std::string& key, const Where& at) {
  object(j, at);
  const auto it = j.find(key);
  if (it == j.end()) fail(at / key, "missing field");
  return *it;
}

// The field `key`, or nullptr when it is missing or null.
inline const Json* optional_field(const Json& j, const std::string& key, const Where& at) {
  object(j, at);
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

inline std::string as_string(const Json& j, const Where& at) {
  if (!j.is_string()) fail(at, "expected a string, found ", type_name(j));
  return j.get<std::string>();
}

inline bool as_bool(const Json& j, const Where& at) {
  if (!j.is_boolean()) fail(at, "expected a boolean, found ", type_name(j));
  return j.get<bool>();
}

inline std::uint64_t as_uint(const Json& j, const Where& at,
                             std::uint64_t max = std::numeric_limits<std::uint32_t>::max()) {
  if (!j.is_number_unsigned() && !(j.is_number_integer() && j.get<std::int64_t>() >= 0)) {
    fail(at, "expected a non-negative integer, found ",
         j.is_number() ? "a " + std::string(j.is_number_float() ? "fraction" : "negative number")
                       : std::string(type_name(j)));
  }
  const std::uint64_t v = j.get<std::uint64_t>();
  if (v > max) fail(at, "value ", v, " is larger than ", max);
  return v;
}

inline std::int64_t as_int(const Json& j, const Where& at) {
  if (!j.is_number_integer()) fail(at, "expected an integer, found ", type_name(j));
  return j.get<std::int64_t>();
}

inline double as_double(const Json& j, const Where& at) {
  if (!j.is_number()) fail(at, "expected a number, found ", type_name(j));
  return j.get<double>();
}

inline std::string get_string(const Json& j, const std::string& key, const Where& at) {
  return as_string(field(j, key, at), at / key);
}

inline bool get_bool(const Json& j, const std::string& key, const Where& at, bool fallback) {
  const Json* v = optional_field(j, key, at);
  return v == nullptr ? fallback : as_bool(*v, at / key);
}

inline std::optional<std::string> get_optional_string(const Json& j, const std::string& key,
                                                      const Where& at) {
  const Json* v = optional_field(j, key, at);
  if (v == nullptr) return std::nullopt;
  return as_string(*v, at / key);
}

inline std::string type_of(const Json& j, const Where& at) {
  return get_string(j, "type", at);
}

}  // namespace sora::text::json
