#pragma once
// Fresh temporary directories for tests: a unique name from mkdtemp under the system's
// temporary directory, so that two runs of a suite at once (two build trees, a CI retry, ctest
// -j) never share or delete each other's files, as fixed names like /tmp/sora_xyz would.

#include <stdlib.h>  // mkdtemp

#include <filesystem>
#include <stdexcept>
#include <string>

namespace sora::testing {

// Creates and returns a new, empty directory named <temp>/<prefix>-XXXXXX. The caller removes it.
inline std::filesystem::path unique_temp_dir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed for " + pattern);
  }
  return pattern;
}

// The same, removed (with everything in it) when the object goes out of scope.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix = "sora-test") : path(unique_temp_dir(prefix)) {}
  ~TempDir() {
    std::error_code ignored;  // a destructor must not throw; a leftover temp dir is harmless
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace sora::testing
