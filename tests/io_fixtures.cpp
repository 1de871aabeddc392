// Writes the files that the out-of-process io checks read (tests/io_files.cmake):
//   good.safetensors  every dtype, a scalar, metadata; values the Python check knows
//   bad.safetensors   two tensors that overlap
//   adapter/          a PEFT LoRA adapter folder with per-module ranks
// With --corpus it writes the fuzzer's seed files instead (tests/fuzz/corpus/).
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sora/io/atomic_file.hpp>
#include <sora/io/safetensors.hpp>
#include <string>

using namespace sora;
using namespace sora::io;
namespace fs = std::filesystem;

namespace {

std::string as_string(const std::vector<std::byte>& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// A header and zero-filled data, without the writer's checks.
std::string raw(const std::string& header, std::size_t data) {
  const std::uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data, '\0');
}

SafetensorsWriter good_file() {
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("writer", "sora");
  Matrix<float> q(4, 3);
  // min -6, max 5.5, mean -0.125, one zero in twelve: what the sora-inspect test expects.
  q << 0, 1, -2, 3, -4, 5.5f, -6, 0.5f, 1, -1, 0.25f, 0.25f;
  w.add("blocks.0.attn.q.weight", q, Dtype::F32);
  RowVector<float> bias(4);
  bias << 0.5f, -0.25f, 1, 2;
  w.add_vector("blocks.0.attn.q.bias", bias, Dtype::F16);
  RowVector<float> ln(3);
  ln << 1, 1.5f, -3;
  w.add_vector("blocks.0.ln.weight", ln, Dtype::BF16);
  Matrix<double> head(2, 2);
  head << 1e-3, -2, 3.5, 4;
  w.add("head.weight", head, Dtype::F64);
  w.add("scalar", Matrix<float>::Constant(1, 1, 42.0f), Dtype::F32, Shape{});
  return w;
}

void write_adapter(const fs::path& dir) {
  fs::create_directories(dir);
  write_file_atomic(dir / "adapter_config.json", R"({
  "peft_type": "LORA",
  "base_model_name_or_path": null,
  "r": 8,
  "lora_alpha": 16,
  "lora_dropout": 0.0,
  "target_modules": ["q", "fc1"],
  "rank_pattern": {"blocks.0.attn.q": 2, "blocks.1.mlp.fc1": 3},
  "alpha_pattern": {},
  "bias": "none"
}
)");
  SafetensorsWriter w;
  w.add("base_model.model.blocks.0.attn.q.lora_A.weight", Matrix<float>::Constant(2, 4, 0.5f),
        Dtype::F32);
  w.add("base_model.model.blocks.0.attn.q.lora_B.weight", Matrix<float>::Constant(4, 2, -1.0f),
        Dtype::F32);
  w.add("base_model.model.blocks.1.mlp.fc1.lora_A.weight", Matrix<float>::Constant(3, 4, 0.25f),
        Dtype::F32);
  w.add("base_model.model.blocks.1.mlp.fc1.lora_B.weight", Matrix<float>::Zero(16, 3), Dtype::F32);
  w.write(dir / "adapter_model.safetensors");
}

void write_corpus(const fs::path& dir) {
  fs::create_directories(dir);
  write_file_atomic(dir / "valid-every-dtype.safetensors", as_string(good_file().bytes()));
  write_file_atomic(dir / "valid-empty.safetensors", as_string(SafetensorsWriter().bytes()));
  SafetensorsWriter small;
  small.add("w", Matrix<float>::Ones(2, 2), Dtype::F16);
  write_file_atomic(dir / "valid-f16.safetensors", as_string(small.bytes()));
  const std::string entry_a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  write_file_atomic(
      dir / "invalid-overlap.safetensors",
      raw("{" + entry_a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12));
  write_file_atomic(dir / "invalid-past-end.safetensors", raw("{" + entry_a + "}", 4));
  write_file_atomic(dir / "invalid-metadata.safetensors", raw(R"({"__metadata__":{"k":1}})", 0));
  write_file_atomic(dir / "invalid-json.safetensors", raw(R"({"a":{"dtype":"F32",)", 0));
  write_file_atomic(dir / "invalid-short.safetensors", std::string("\x10\0\0", 3));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 3 && std::string(argv[1]) == "--corpus") {
      write_corpus(argv[2]);
      return 0;
    }
    if (argc != 2) {
      std::cerr << "usage: " << argv[0] << " DIR | --corpus DIR\n";
      return 2;
    }
    const fs::path dir = argv[1];
    fs::create_directories(dir);
    good_file().write(dir / "good.safetensors");
    write_file_atomic(
        dir / "bad.safetensors",
        raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            12));
    write_adapter(dir / "adapter");
    std::cout << "wrote " << dir.string() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "sora_io_fixtures: " << e.what() << "\n";
    return 1;
  }
}
