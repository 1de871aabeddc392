#pragma once
// Crash-safe folder writes, for outputs made of several files that must agree (a PEFT adapter:
// its config names the ranks its weights have). The files go into a temporary sibling folder,
// which then takes the target's place in one step: on Linux renameat2(RENAME_EXCHANGE) swaps
// the two folders atomically; where that is missing, the old folder is first renamed aside
// (a reader then briefly finds no folder, never a mixed one). A crash before the swap leaves
// the old folder untouched and a hidden ".<name>.tmp.XXXXXX" folder that a later run may
// remove. POSIX only (Linux, macOS).

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc, with _GNU_SOURCE)
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/io/atomic_file.hpp"

namespace sora::io {

namespace atomic_detail {

// A fresh hidden folder next to `target`: ".<name>.<tag>.XXXXXX".
inline std::filesystem::path make_sibling_dir(const std::filesystem::path& target,
                                              const char* tag) {
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::string hidden(1, '.');
  hidden += target.filename().string();
  hidden += tag;
  hidden += ".XXXXXX";
  const std::string pattern = (dir / hidden).string();
  std::vector<char> name(pattern.begin(), pattern.end());
  name.push_back('\0');
  SORA_CHECK(::mkdtemp(name.data()) != nullptr, "cannot write '", target.string(),
             "': cannot create a temporary folder in '", dir.string(), "': ", errno_text(errno));
  return std::filesystem::path(name.data());
}

inline void sync_dir(const std::filesystem::path& dir) noexcept {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Swaps two existing paths atomically; false where the system cannot (errno says why).
inline bool exchange(const std::filesystem::path& a, const std::filesystem::path& b) {
#ifdef RENAME_EXCHANGE
  return ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0;
#else
  (void)a;
  (void)b;
  errno = ENOSYS;
  return false;
#endif
}

}  // namespace atomic_detail

// Writes a folder through a temporary one: put the files into path() (their own writes need
// not be atomic, but write_file_atomic works there too), then commit(). Destroying the writer
// without commit() removes the temporary folder and leaves the target as it was.
class AtomicDirWriter {
 public:
  explicit AtomicDirWriter(std::filesystem::path target) : target_(std::move(target)) {
    std::error_code ec;
    const auto status = std::filesystem::symlink_status(target_, ec);
    SORA_CHECK(!std::filesystem::exists(status) || std::filesystem::is_directory(status),
               "cannot write the folder '", target_.string(), "': a file of that name is there");
    temp_ = atomic_detail::make_sibling_dir(target_, ".tmp");
    // mkdtemp creates 0700; give the folder the permissions an ordinary mkdir would.
    const mode_t mask = ::umask(0);
    ::umask(mask);
    ::chmod(temp_.c_str(), 0777 & ~mask);
  }

  AtomicDirWriter(const AtomicDirWriter&) = delete;
  AtomicDirWriter& operator=(const AtomicDirWriter&) = delete;

  ~AtomicDirWriter() { abandon(); }

  // The temporary folder that becomes the target on commit().
  const std::filesystem::path& path() const { return temp_; }

  // Makes the temporary folder the target; the old target, if any, is removed afterwards.
  void commit() {
    SORA_CHECK(!temp_.empty(), "cannot write '", target_.string(), "': the writer is closed");
    atomic_detail::sync_dir(temp_);
    if (before_atomic_commit()) {
      try {
        before_atomic_commit()(target_);
      } catch (...) {
        abandon();
        throw;
      }
    }
    std::error_code ec;
    if (!std::filesystem::exists(target_, ec)) {
      if (::rename(temp_.c_str(), target_.c_str()) != 0) fail("cannot rename the temporary folder");
      temp_.clear();
    } else if (atomic_detail::exchange(temp_, target_)) {
      // temp_ now names the old folder.
      std::filesystem::remove_all(std::exchange(temp_, {}), ec);
    } else {
      // No atomic exchange here: move the old folder aside first.
      const std::filesystem::path old = atomic_detail::make_sibling_dir(target_, ".old");
      if (::rename(target_.c_str(), old.c_str()) != 0) fail("cannot move the old folder aside");
      if (::rename(temp_.c_str(), target_.c_str()) != 0) {
        const int err = errno;
        ::rename(old.c_str(), target_.c_str());  // put the old folder back
        errno = err;
        fail("cannot rename the temporary folder");
      }
      temp_.clear();
      std::filesystem::remove_all(old, ec);
    }
    atomic_detail::sync_dir(target_.parent_path());
  }

 private:
  [[noreturn]] void fail(const char* what) {
    const int err = errno;
    abandon();
    detail::throw_error("cannot write the folder '", target_.string(), "': ", what, ": ",
                        atomic_detail::errno_text(err));
  }

  void abandon() noexcept {
    if (temp_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(temp_, ec);
    temp_.clear();
  }

  std::filesystem::path target_;
  std::filesystem::path temp_;
};

}  // namespace sora::io
