#pragma once
// Crash-safe file writes: the bytes go to a temporary file in the target's own directory
// (rename is atomic only within one file system), are flushed to disk, and the temporary
// is then renamed over the target. A reader, or a run that crashed half-way, sees either
// the old file or the complete new one, never a torn mixture. POSIX only (Linux, macOS).

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"

namespace sora::io {

namespace atomic_detail {
inline std::string errno_text(int err) {
  return std::strerror(err);
}
}  // namespace atomic_detail

// Fault injection for tests: when set, called with the target of every atomic write (a file
// or, from AtomicDirWriter, a folder) after its data is complete and just before it replaces
// the target; throwing there is a failure at the last possible moment, and the tests check
// that nothing was replaced. Empty (no cost beyond one test) in normal use.
inline std::function<void(const std::filesystem::path&)>& before_atomic_commit() {
  static std::function<void(const std::filesystem::path&)> hook;
  return hook;
}

// Writes a file through a temporary: write() as often as needed, then commit(). Destroying
// the writer without commit() (an exception on the way, say) removes the temporary and
// leaves whatever file was at the target untouched.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path target) : target_(std::move(target)) {
    std::filesystem::path dir = target_.parent_path();
    if (dir.empty()) dir = ".";
    // A hidden name next to the target. (Built by appending: g++ 12 reports a false
    // -Wrestrict for "." + string.)
    std::string hidden(1, '.');
    hidden += target_.filename().string();
    hidden += ".tmp.XXXXXX";
    std::string pattern = (dir / hidden).string();
    std::vector<char> name(pattern.begin(), pattern.end());
    name.push_back('\0');
    fd_ = ::mkstemp(name.data());
    SORA_CHECK(fd_ >= 0, "cannot write '", target_.string(),
               "': cannot create a temporary file in '", dir.string(),
               "': ", atomic_detail::errno_text(errno));
    temp_ = std::filesystem::path(name.data());
    // mkstemp creates 0600; give the file the permissions an ordinary open() would.
    const mode_t mask = ::umask(0);
    ::umask(mask);
    ::fchmod(fd_, 0666 & ~mask);
  }

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  ~AtomicFileWriter() { abandon(); }

  void write(const void* data, std::size_t size) {
    SORA_CHECK(fd_ >= 0, "cannot write '", target_.string(), "': the writer is closed");
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      const ::ssize_t n = ::write(fd_, p, size);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = errno;
        abandon();
        detail::throw_error("cannot write '", target_.string(),
                            "': ", n < 0 ? atomic_detail::errno_text(err) : "no progress");
      }
      p += n;
      size -= static_cast<std::size_t>(n);
    }
  }
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }

  // Flushes the data to disk, then renames the temporary over the target. The order
  // matters: renaming before the data is durable could expose an empty file after a
  // power loss.
  void commit() {
    SORA_CHECK(fd_ >= 0, "cannot write '", target_.string(), "': the writer is closed");
    if (::fsync(fd_) != 0) fail("cannot flush");
    if (before_atomic_commit()) {
      try {
        before_atomic_commit()(target_);
      } catch (...) {
        abandon();
        throw;
      }
    }
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) fail("cannot close");
    if (::rename(temp_.c_str(), target_.c_str()) != 0) fail("cannot rename the temporary file");
    temp_.clear();
    // Make the rename itself durable; failing to sync a directory is not worth an error.
    std::filesystem::path dir = target_.parent_path();
    if (dir.empty()) dir = ".";
    const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dir_fd >= 0) {
      ::fsync(dir_fd);
      ::close(dir_fd);
    }
  }

  const std::filesystem::path& temporary_path() const { return temp_; }

 private:
  [[noreturn]] void fail(const char* what) {
    const int err = errno;
    abandon();
    detail::throw_error("cannot write '", target_.string(), "': ", what, ": ",
                        atomic_detail::errno_text(err));
  }

  void abandon() noexcept {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    if (!temp_.empty()) {
      ::unlink(temp_.c_str());
      temp_.clear();
    }
  }

  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
};

// Replaces the file at `path` with `bytes`, atomically.
inline void write_file_atomic(const std::filesystem::path& path, std::string_view bytes) {
  AtomicFileWriter out(path);
  out.write(bytes);
  out.commit();
}

}  // namespace sora::io
