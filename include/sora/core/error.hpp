#pragma once
// sora::Error and SORA_CHECK: every bad argument a user can pass becomes an exception whose
// message names the problem (and the shapes involved), never a crash or an assert.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sora {

namespace detail {

// Control bytes in a message (a NUL or an escape sequence from a file's contents, say) would
// cut it short or garble the terminal: each is shown as \xNN. Newlines stay (messages that
// list several problems put one per line).
inline std::string escape_control_bytes(const std::string& text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && c != '\n') || byte == 0x7f) {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace detail

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message)
      : std::runtime_error(detail::escape_control_bytes(message)) {}
};

namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

template <class... Parts>
[[noreturn]] void throw_error(Parts&&... parts) {
  throw Error(concat(std::forward<Parts>(parts)...));
}

}  // namespace detail
}  // namespace sora

// SORA_CHECK(cond, part, part, ...): throws sora::Error("<parts...>") when cond is false.
// The parts are only formatted on failure, so a check costs one branch on the happy path.
#define SORA_CHECK(cond, ...)                   \
  do {                                          \
    if (!(cond)) [[unlikely]] {                 \
      ::sora::detail::throw_error(__VA_ARGS__); \
    }                                           \
  } while (false)
