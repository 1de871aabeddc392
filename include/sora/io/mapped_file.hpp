#pragma once
// A read-only memory map of a whole file: large weight files are read by the page cache on
// demand instead of being copied into the heap first. The mapping is private and read-only,
// and sora replaces files by renaming (io/atomic_file.hpp), so a file rewritten while it
// is mapped leaves this mapping on the old, unchanged contents. (Truncating a mapped file
// in place, which sora never does, would make reads fault.)

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <utility>

#include "sora/core/error.hpp"
#include "sora/io/input_file.hpp"

namespace sora::io {

class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path) {
    // Only a regular file is mapped; opened non-blocking, a FIFO cannot hang the open.
    std::uint64_t bytes = 0;
    const int fd = open_regular_file(path, std::numeric_limits<std::uint64_t>::max(), &bytes);
    size_ = static_cast<std::size_t>(bytes);
    if (size_ > 0) {  // mmap refuses a zero length; an empty file is simply empty
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);  // the mapping keeps the file alive
      SORA_CHECK(p != MAP_FAILED, "cannot map '", path.string(), "': ", std::strerror(err));
      data_ = static_cast<const std::byte*>(p);
    } else {
      ::close(fd);
    }
  }

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  }

  std::span<const std::byte> bytes() const { return {data_, size_}; }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace sora::io
