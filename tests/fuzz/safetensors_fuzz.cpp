// libFuzzer target for the safetensors reader (run by scripts/fuzz-safetensors).
//
// Any input must either be rejected with sora::Error or yield a file whose every tensor can
// be read, whose tensors tile the data section, and which survives a write -> read round
// trip unchanged. Anything else (a crash, a sanitizer report, another exception, a broken
// invariant) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sora/io/safetensors.hpp>
#include <span>
#include <vector>

using namespace sora::io;

namespace {

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "safetensors_fuzz: %s\n", what);
  std::abort();
}

void check_file(const SafetensorsFile& file) {
  // Tiling: in data order, each tensor begins where the previous ended.
  std::uint64_t covered = 0;
  for (const TensorInfo& t : file.tensors()) {
    if (t.begin != covered) finding("tensors do not tile the data section");
    if (t.nbytes() != t.numel() * dtype_size(t.dtype)) finding("byte count mismatch accepted");
    covered = t.end;
  }
  if (file.data_offset() + covered != file.file_size()) finding("data section not covered");

  for (const TensorInfo& t : file.tensors()) {
    std::vector<double> d(static_cast<std::size_t>(t.numel()));
    file.read<double>(t, std::span<double>(d));
    if (t.shape.size() <= 2) {
      const sora::Matrix<float> m = file.matrix<float>(t.name);
      if (static_cast<std::uint64_t>(m.size()) != t.numel()) finding("matrix size mismatch");
      if (file.viewable<float>(t)) (void)file.view<float>(t.name).sum();
    }
  }

  // Round trip through the writer: same tensors, bytes and metadata.
  SafetensorsWriter writer;
  for (const auto& [key, value] : file.metadata()) writer.set_metadata(key, value);
  for (const TensorInfo& t : file.tensors()) {
    const std::span<const std::byte> raw = file.raw(t);
    writer.add_raw(t.name, t.dtype, t.shape, std::vector<std::byte>(raw.begin(), raw.end()));
  }
  const SafetensorsFile again = SafetensorsFile::from_bytes(writer.bytes(), "rewritten");
  if (again.metadata() != file.metadata()) finding("metadata changed in a round trip");
  if (again.tensors().size() != file.tensors().size()) finding("tensor count changed");
  for (const TensorInfo& t : file.tensors()) {
    const TensorInfo* u = again.find(t.name);
    if (u == nullptr || u->dtype != t.dtype || u->shape != t.shape) finding("tensor changed");
    const auto a = file.raw(t), b = again.raw(*u);
    if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size()) != 0) {
      finding("tensor bytes changed in a round trip");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  if (size > 0) std::memcpy(bytes.data(), data, size);
  std::optional<SafetensorsFile> file;
  try {
    file = SafetensorsFile::from_bytes(std::move(bytes), "fuzz");
  } catch (const sora::Error&) {
    return 0;  // rejected cleanly: the expected outcome for most inputs
  }
  try {
    check_file(*file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "safetensors_fuzz: an accepted file failed later: %s\n", e.what());
    std::abort();
  }
  return 0;
}
