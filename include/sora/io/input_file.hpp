#pragma once
// Reading a whole input file safely: only a regular file is read. A FIFO would block the
// program until some writer appears, /dev/zero would be read until memory runs out, and a
// directory fails deep inside a stream with an unhelpful message; each is an error naming the
// path and the kind of file instead. The file is opened non-blocking so that even opening a
// FIFO returns at once, and a size cap turns an absurd file into an error before any read.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>

#include "sora/core/error.hpp"

namespace sora::io {

// The largest input read_input_file reads by default (GLUE tables, JSON configs, text).
inline constexpr std::uint64_t kMaxInputBytes = std::uint64_t{4} << 30;  // 4 GiB

inline const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// Opens `path` for reading if it is a regular file of at most max_bytes; returns the open
// descriptor and sets *size. Throws sora::Error naming the path otherwise.
inline int open_regular_file(const std::filesystem::path& path, std::uint64_t max_bytes,
                             std::uint64_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  SORA_CHECK(fd >= 0, "cannot open '", path.string(), "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    detail::throw_error("cannot read '", path.string(), "': ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    detail::throw_error("cannot read '", path.string(), "': it is ", file_kind(st.st_mode),
                        ", not a regular file");
  }
  const auto bytes = static_cast<std::uint64_t>(st.st_size);
  if (bytes > max_bytes) {
    ::close(fd);
    detail::throw_error("cannot read '", path.string(), "': ", bytes, " bytes is more than the ",
                        max_bytes, " bytes this input may have");
  }
  // Regular files never block; reads below are ordinary.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  *size = bytes;
  return fd;
}

// The whole contents of a regular file of at most max_bytes.
inline std::string read_input_file(const std::filesystem::path& path,
                                   std::uint64_t max_bytes = kMaxInputBytes) {
  std::uint64_t size = 0;
  const int fd = open_regular_file(path, max_bytes, &size);
  std::string text;
  text.reserve(static_cast<std::size_t>(size));
  char buffer[1 << 16];
  for (;;) {
    const ::ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      detail::throw_error("cannot read '", path.string(), "': ", std::strerror(err));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    if (text.size() > max_bytes) {  // the file grew while being read
      ::close(fd);
      detail::throw_error("cannot read '", path.string(), "': more than ", max_bytes, " bytes");
    }
  }
  ::close(fd);
  return text;
}

}  // namespace sora::io
