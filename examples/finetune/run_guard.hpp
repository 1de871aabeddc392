#pragma once
// What keeps one sora-finetune run from losing or mixing up files:
//   - a lock (flock) on a file in the output folder and in the cache folder, so that a second
//     run on the same folder fails at once, naming the PID that holds it;
//   - the run's id (written into summary.json, the adapters' metadata and the marker), so that
//     every file says which run made it;
//   - a marker, INCOMPLETE, present from the first write until summary.json (written last)
//     is complete: a folder with the marker is a run that is still going or died;
//   - clean-up of the hidden temporaries that a killed run left (.<name>.tmp.XXXXXX), done
//     only while holding the lock, so that no live run's temporary is removed;
//   - SIGINT and SIGTERM turned into an error at the next training step, so that the
//     temporaries of an interrupted run are removed on the way out like any error's.
// Linux and macOS (flock is BSD's, on both).

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <ostream>
#include <string>
#include <utility>

#include "sora/core/error.hpp"
#include "sora/io/atomic_file.hpp"

namespace sora_finetune {

inline constexpr const char* kLockFile = ".sora-finetune.lock";
inline constexpr const char* kIncompleteMarker = "INCOMPLETE";

// An exclusive flock on <dir>/.sora-finetune.lock for the life of the object. The lock file
// holds the PID of its owner; it is never removed (removing it would let two runs each lock a
// different file of the same name).
class FolderLock {
 public:
  FolderLock(const std::filesystem::path& dir, const char* what) {
    const std::filesystem::path path = dir / kLockFile;
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    SORA_CHECK(fd_ >= 0, "cannot use the ", what, " '", dir.string(), "': cannot create '",
               path.string(), "': ", std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char pid[32] = {0};
      const ::ssize_t n = ::pread(fd_, pid, sizeof pid - 1, 0);
      ::close(fd_);
      fd_ = -1;
      if (err == EWOULDBLOCK) {
        std::string owner = n > 0 ? std::string(pid, static_cast<std::size_t>(n)) : "?";
        while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
        sora::detail::throw_error("the ", what, " '", dir.string(), "' is in use by PID ", owner,
                                  " (another sora-finetune run); use another folder or wait");
      }
      sora::detail::throw_error("cannot lock '", path.string(), "': ", std::strerror(err));
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
      const int err = errno;
      ::close(fd_);
      sora::detail::throw_error("cannot use the ", what, " '", dir.string(), "': cannot write '",
                                path.string(), "': ", std::strerror(err));
    }
  }
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;
  ~FolderLock() {
    if (fd_ >= 0) ::close(fd_);  // closing releases the lock
  }

 private:
  int fd_ = -1;
};

// A name for this run, unique enough to tell runs apart: start time and PID, in hex.
inline std::string new_run_id() {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  char id[40];
  std::snprintf(id, sizeof id, "%012llx-%x",
                static_cast<unsigned long long>(ns) & 0xffffffffffffULL,
                static_cast<unsigned>(::getpid()));
  return id;
}

// True for the names of the temporaries io::AtomicFileWriter and io::AtomicDirWriter make:
// ".<name>.tmp.XXXXXX" and ".<name>.old.XXXXXX".
inline bool is_temporary_name(const std::string& name) {
  constexpr std::size_t kSuffix = 11;  // ".tmp.XXXXXX"
  if (name.size() < kSuffix + 2 || name[0] != '.') return false;
  const std::string kind = name.substr(name.size() - kSuffix, 5);
  return kind == ".tmp." || kind == ".old.";
}

// Removes the temporaries a killed run left in `dir` (call only while holding its lock).
// Returns how many were removed.
inline int remove_stale_temporaries(const std::filesystem::path& dir) {
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!is_temporary_name(entry.path().filename().string())) continue;
    if (std::filesystem::remove_all(entry.path(), ec) > 0) ++removed;
  }
  return removed;
}

// The INCOMPLETE marker of an output folder. It is written just before the run's first output
// file, so that a run that fails before writing anything (bad input, a diverged first method)
// leaves an earlier run's folder exactly as it was; from then on an earlier summary.json would
// describe other files, so it is removed. finished() removes the marker once summary.json is
// complete.
class IncompleteMarker {
 public:
  IncompleteMarker(std::filesystem::path out, std::string run_id)
      : out_(std::move(out)), run_id_(std::move(run_id)) {}

  void before_first_write() {
    if (written_) return;
    sora::io::write_file_atomic(out_ / kIncompleteMarker,
                                "sora-finetune run " + run_id_ +
                                    " is writing this folder, or died doing so; summary.json "
                                    "is written last\n");
    std::error_code ec;
    std::filesystem::remove(out_ / "summary.json", ec);
    written_ = true;
  }
  void finished() {
    std::error_code ec;
    std::filesystem::remove(out_ / kIncompleteMarker, ec);
  }

 private:
  std::filesystem::path out_;
  std::string run_id_;
  bool written_ = false;
};

// ---- SIGINT / SIGTERM ------------------------------------------------------------------------

inline std::atomic<int>& stop_signal() {
  static std::atomic<int> signal{0};
  return signal;
}

extern "C" inline void sora_finetune_on_stop_signal(int sig) {
  stop_signal().store(sig);
}

// SIGINT and SIGTERM only set a flag (async-signal-safe); throw_if_stopped() turns it into an
// error at the next training step. SIGXFSZ is ignored so that a write past the file-size
// limit fails with EFBIG, which the atomic writers report (and clean up), instead of killing
// the process with a temporary left behind.
inline void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = sora_finetune_on_stop_signal;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  std::signal(SIGXFSZ, SIG_IGN);
}

inline void throw_if_stopped() {
  if (const int sig = stop_signal().load())
    sora::detail::throw_error("stopped by ", sig == SIGINT ? "SIGINT" : "SIGTERM",
                              "; temporary files removed, earlier outputs kept");
}

// The exit code of a run that ended with an error: 128 + the signal when one stopped it.
inline int error_exit_code() {
  const int sig = stop_signal().load();
  return sig != 0 ? 128 + sig : 1;
}

// ---- paths -----------------------------------------------------------------------------------

// True when `text` is valid UTF-8 (what JSON strings, and so summary.json, can hold).
inline bool is_utf8(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    int extra = 0;
    if (c < 0x80) {
      extra = 0;
    } else if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
    } else {
      return false;
    }
    if (i + static_cast<std::size_t>(extra) >= text.size() && extra > 0) return false;
    for (int k = 1; k <= extra; ++k)
      if ((static_cast<unsigned char>(text[i + static_cast<std::size_t>(k)]) & 0xC0) != 0x80)
        return false;
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF.
    const auto next = extra > 0 ? static_cast<unsigned char>(text[i + 1]) : 0;
    if ((c == 0xE0 && next < 0xA0) || (c == 0xED && next > 0x9F) || (c == 0xF0 && next < 0x90) ||
        (c == 0xF4 && next > 0x8F))
      return false;
    i += static_cast<std::size_t>(extra) + 1;
  }
  return true;
}

}  // namespace sora_finetune
