// sora-forward: runs a Hugging Face model folder on token ids and writes what it computes, so
// that sora can be checked against any other implementation from the command line.
//
//   sora-forward --model DIR --input batch.json --out result.safetensors [--task classification]
//
// batch.json: {"input_ids": [[101, 2023, ...], ...], "attention_mask": [[1, 1, ...], ...],
// "token_type_ids": [[0, 0, ...], ...]}; the mask and types are optional. Sequences of different
// lengths are right-padded with the model's pad_token_id (and masked). The output holds
// "hidden" (B, T, C), the last hidden states, and with --task classification "logits" (B, K)
// from the task head (trained in the folder, or freshly initialised with --seed when absent), with
// --task causal-lm "logits" (B, T, V). Families: BERT, RoBERTa (MiniLM), GPT-2.
// The file is written atomically; evaluation mode (no dropout).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sora/io/input_file.hpp>
#include <sora/io/safetensors.hpp>
#include <sora/model/hf.hpp>
#include <string>
#include <vector>

namespace hf = sora::model::hf;
using sora::Index;

namespace {

std::vector<std::vector<long long>> rows_of(const nlohmann::json& j, const char* key) {
  std::vector<std::vector<long long>> rows;
  const auto it = j.find(key);
  if (it == j.end()) return rows;
  SORA_CHECK(it->is_array(), "\"", key, "\" must be a list of lists of integers");
  for (const auto& row : *it) {
    SORA_CHECK(row.is_array(), "\"", key, "\" must be a list of lists of integers");
    std::vector<long long>& out = rows.emplace_back();
    for (const auto& v : row) {
      SORA_CHECK(v.is_number_integer(), "\"", key, "\" holds ", v.dump(), ", not an integer");
      out.push_back(v.get<long long>());
    }
  }
  return rows;
}

sora::model::Batch read_batch(const std::string& path, int pad_id, bool with_types) {
  const std::string text = sora::io::read_input_file(path);  // regular files only
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    sora::detail::throw_error(path, ": not valid JSON (", e.what(), ")");
  }
  SORA_CHECK(j.is_object(), path, ": expected an object with \"input_ids\"");
  const auto ids = rows_of(j, "input_ids");
  const auto mask = rows_of(j, "attention_mask");
  const auto types = rows_of(j, "token_type_ids");
  SORA_CHECK(!ids.empty(), path, ": \"input_ids\" is missing or empty");
  std::size_t T = 0;
  for (const auto& row : ids) T = std::max(T, row.size());
  SORA_CHECK(T > 0, path, ": every sequence is empty");
  SORA_CHECK(mask.empty() || mask.size() == ids.size(), path, ": ", mask.size(),
             " attention masks for ", ids.size(), " sequences");
  SORA_CHECK(types.empty() || types.size() == ids.size(), path, ": ", types.size(),
             " token type rows for ", ids.size(), " sequences");
  sora::model::Batch b;
  b.batch = static_cast<Index>(ids.size());
  b.seq = static_cast<Index>(T);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    SORA_CHECK(mask.empty() || mask[i].size() == ids[i].size(), path, ": sequence ", i, " has ",
               ids[i].size(), " ids and ", mask[i].size(), " mask entries");
    SORA_CHECK(types.empty() || types[i].size() == ids[i].size(), path, ": sequence ", i, " has ",
               ids[i].size(), " ids and ", types[i].size(), " token types");
    for (std::size_t t = 0; t < T; ++t) {
      const bool real = t < ids[i].size();
      const long long id = real ? ids[i][t] : pad_id;
      SORA_CHECK(id >= 0 && id <= 0x7fffffff, path, ": token id ", id, " is negative or too large");
      b.tokens.push_back(static_cast<int>(id));
      b.mask.push_back(real ? static_cast<float>(mask.empty() ? 1 : mask[i][t]) : 0.0f);
      if (with_types)
        b.token_types.push_back(real && !types.empty() ? static_cast<int>(types[i][t]) : 0);
    }
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Run a Hugging Face model folder on token ids; write hidden states and logits"};
  std::string model_dir, input, out, task = "none";
  Index num_labels = 0;
  std::uint64_t seed = 0;
  app.add_option("--model", model_dir, "a Hugging Face model folder")->required();
  app.add_option("--input", input, "JSON with input_ids (and attention_mask, token_type_ids)")
      ->required();
  app.add_option("--out", out, "the .safetensors file to write")->required();
  app.add_option("--task", task,
                 "none (hidden states), classification or causal-lm (and their logits)")
      ->check(CLI::IsMember({"none", "classification", "causal-lm"}));
  app.add_option("--num-labels", num_labels, "classes of a new head (default: the config's)");
  app.add_option("--seed", seed, "initialisation of a head the folder lacks");
  CLI11_PARSE(app, argc, argv);
  try {
    const hf::Task t = task == "none"             ? hf::Task::none
                       : task == "classification" ? hf::Task::sequence_classification
                                                  : hf::Task::causal_lm;
    hf::with_pretrained<float>(model_dir, {t, num_labels, seed}, [&](auto& model) {
      model.eval();
      // GPT-2 has no pad token by default: padding is masked, so any id serves.
      const sora::model::Batch batch = read_batch(input, std::max(0, model.config().pad_token_id),
                                                  model.config().type_vocab_size > 1);
      sora::io::SafetensorsWriter writer;
      const auto& hidden = model.forward_hidden(batch);
      const sora::io::Shape shape{static_cast<std::uint64_t>(batch.batch),
                                  static_cast<std::uint64_t>(batch.seq),
                                  static_cast<std::uint64_t>(hidden.cols())};
      // A NaN never reaches a file: it means bad weights, and the program says so.
      SORA_CHECK(hidden.allFinite(), model_dir,
                 ": the hidden states are not finite (NaN or inf "
                 "weights in the checkpoint?); nothing written");
      writer.add("hidden", hidden, sora::io::Dtype::F32, shape);
      if (t != hf::Task::none) {
        const auto& logits = model.forward_logits(batch);
        SORA_CHECK(logits.allFinite(), model_dir, ": the logits are not finite; nothing written");
        if (t == hf::Task::causal_lm) {
          writer.add("logits", logits, sora::io::Dtype::F32,
                     {shape[0], shape[1], static_cast<std::uint64_t>(logits.cols())});
        } else {
          writer.add("logits", logits, sora::io::Dtype::F32);
        }
      }
      writer.set_metadata("model", model_dir);
      writer.write(out);
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sora-forward: %s\n", e.what());
    return 1;
  }
  return 0;
}
