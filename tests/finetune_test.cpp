// sora-finetune's logic (examples/finetune/*.hpp) and the PEFT adapter files it writes
// (io/peft_adapter.hpp): argument parsing and its errors, export -> import -> identical
// outputs, a tiny end-to-end run whose files are read back, and the pretraining cache.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "finetune.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace sora_finetune;

namespace {

struct Parsed {
  std::optional<int> code;
  Options options;
  std::string out, err;
};

Parsed parse(std::vector<const char*> args) {
  args.insert(args.begin(), "sora-finetune");
  Parsed p;
  std::ostringstream out, err;
  p.code = parse_options(static_cast<int>(args.size()), args.data(), p.options, out, err);
  p.out = out.str();
  p.err = err.str();
  return p;
}

fs::path fresh_dir(const std::string& name) {
  return sora::testing::unique_temp_dir("sora-finetune-test-" + name);
}

// Options for runs of a few seconds.
Options tiny(const fs::path& out) {
  Options o;
  o.out = out.string();
  o.plain = true;
  o.seeds = 1;
  o.train_size = 64;
  o.val_size = 32;
  o.test_size = 32;
  o.width = 16;
  o.layers = 2;
  o.heads = 2;
  o.pretrain_steps = 5;
  o.pretrain_batch = 4;
  o.corpus_tokens = 2000;
  o.epochs = 2;
  o.batch_size = 16;
  o.xi = 0.05;  // large enough that a few gates die in 8 steps
  return o;
}

sora::Matrix<float> logits_of(Model& model, const sora::model::Batch& batch) {
  model.eval();
  return model.forward_logits(batch);
}

}  // namespace

TEST_CASE("finetune options: defaults parse and name the embedded pair task") {
  const Parsed p = parse({});
  CHECK_FALSE(p.code.has_value());
  CHECK(p.options.method == "sora");
  CHECK(p.options.task == "pair");
  CHECK(p.options.synthetic());
  CHECK(p.options.seeds == 3);
}

TEST_CASE("finetune options: --help documents every flag and exits 0") {
  const Parsed p = parse({"--help"});
  REQUIRE(p.code.has_value());
  CHECK(*p.code == 0);
  for (const char* flag :
       {"--method", "--compare", "--sparsity-schedule", "--task", "--glue-dir", "--pretrain-text",
        "--threads", "--rank", "--alpha", "--lr", "--xi", "--adalora-target-rank", "--xi-schedule",
        "--seeds", "--out", "--device", "--cuda-math"})
    CHECK_MESSAGE(p.out.find(flag) != std::string::npos, flag);
  CHECK(p.out.find("Exit codes: 0 success, 1 the run failed, 2 a wrong command line") !=
        std::string::npos);
}

TEST_CASE("finetune options: bad values are errors that name their flag") {
  struct Case {
    std::vector<const char*> args;
    const char* flag;
  };
  const std::vector<Case> cases = {
      {{"--method", "qlora"}, "--method"},
      {{"--rank", "0"}, "--rank"},
      {{"--rank", "eight"}, "--rank"},
      {{"--lr", "-1"}, "--lr"},
      {{"--xi-schedule", "cubic"}, "--xi-schedule"},
      {{"--task", "sst2"}, "--task"},
      {{"--task", "nonsense"}, "--task"},
      {{"--glue-dir", "/nonexistent/glue"}, "--glue-dir"},
      {{"--pretrain-text", "/nonexistent.txt"}, "--pretrain-text"},
      {{"--width", "30", "--heads", "4"}, "--heads"},
      {{"--adalora-target-rank", "9", "--rank", "8"}, "--adalora-target-rank"},
      {{"--xi0", "0.5", "--xi-max", "0.1"}, "--xi-max"},
      {{"--threads", "-2"}, "--threads"},
      {{"--device", "gpu"}, "--device"},
      {{"--cuda-math", "fp8"}, "--cuda-math"},
      {{"--frozen-base", "fp16"}, "--frozen-base"},
      {{"--frozen-base", "bf16", "--method", "full"}, "--frozen-base"},
      {{"--frozen-base", "bf16", "--device", "cuda"}, "--frozen-base"},
      {{"--no-such-flag"}, "--no-such-flag"},
      // Values that pass a naive range check: NaN, infinities, absurd scales, impossible shapes.
      {{"--lr", "nan"}, "--lr"},
      {{"--pretrain-lr", "inf"}, "--pretrain-lr"},
      {{"--alpha", "1e38"}, "--alpha"},
      {{"--alpha", "-inf"}, "--alpha"},
      {{"--dropout", "nan"}, "--dropout"},
      {{"--sparsity-schedule", "--xi-max", "nan"}, "--xi-max"},
      {{"--xi", "inf"}, "--xi"},
      {{"--rank", "32", "--width", "16", "--heads", "2"}, "--rank"},
      {{"--targets", "q,query"}, "--targets"},
  };
  for (const Case& c : cases) {
    const Parsed p = parse(c.args);
    INFO("args: ", c.args.front(), " -> ", p.err);
    REQUIRE(p.code.has_value());
    CHECK(*p.code == 2);  // one exit code for every command-line error
    CHECK(p.err.find(c.flag) != std::string::npos);
    CHECK(p.err.find("17976931348623157") == std::string::npos);  // never DBL_MAX's digits
  }
}

// This test program is built without SORA_FINETUNE_CUDA (the program itself gets cuda_run.cu
// where nvcc exists): asking it for the GPU must say so before doing any work.
TEST_CASE("finetune: --device cuda without the CUDA backend is an error before any output") {
  const Parsed p = parse({"--device", "cuda", "--out", "ft-device-cuda-never-written"});
  REQUIRE_FALSE(p.code.has_value());
  CHECK(p.options.device == "cuda");
  std::ostringstream log;
  std::filesystem::remove_all("ft-device-cuda-never-written");
  try {
    sora_finetune::run(p.options, log);
    FAIL("run() with --device cuda returned in a build without the CUDA backend");
  } catch (const sora::Error& e) {
    const std::string what = e.what();
    CHECK(what.find("--device cuda") != std::string::npos);
    CHECK(what.find("without the CUDA backend") != std::string::npos);
  }
  CHECK_FALSE(std::filesystem::exists("ft-device-cuda-never-written"));
}

TEST_CASE("finetune data: the synthetic tasks are deterministic and labelled from the sentiment") {
  const TaskData a = synthetic_task("polarity", 3, 50, 10, 10);
  const TaskData b = synthetic_task("polarity", 3, 50, 10, 10);
  REQUIRE(a.train.size() == 50);
  for (std::size_t i = 0; i < a.train.size(); ++i) {
    CHECK(a.train[i].tokens == b.train[i].tokens);
    CHECK(a.train[i].label == b.train[i].label);
  }
  // The test split does not depend on the training split's size.
  const TaskData c = synthetic_task("polarity", 3, 20, 10, 10);
  CHECK(c.test.front().tokens == a.test.front().tokens);
  int positives = 0;
  for (const Example& e : a.train) positives += e.label;
  CHECK(positives > 5);
  CHECK(positives < 45);
  const TaskData s = synthetic_task("score", 3, 30, 5, 5);
  CHECK(s.regression);
  for (const Example& e : s.train) CHECK(std::abs(e.value) <= 1.0);
  const TaskData pair = synthetic_task("pair", 3, 30, 5, 5);
  const auto sep =
      std::count(pair.train[0].tokens.begin(), pair.train[0].tokens.end(), Lexicon::kSep);
  CHECK(sep == 1);
}

TEST_CASE("peft adapter: export -> import gives identical outputs, rank-0 modules left out") {
  sora::model::TransformerConfig c;
  c.vocab_size = 30;
  c.width = 16;
  c.heads = 2;
  c.layers = 2;
  c.max_len = 12;
  c.dropout = 0.0;
  c.head = sora::model::Head::classification;
  c.num_labels = 3;
  c.seed = 5;
  Model trained(c);
  sora::model::PeftConfig peft;
  peft.method = sora::model::Method::sora;
  peft.rank = 4;
  peft.alpha = 8.0;
  trained.apply_peft(peft);
  // Trained-looking adapters: random B, some gates zero, one module with every gate zero.
  sora::Rng rng(9);
  int module = 0;
  trained.visit_linears([&](const std::string&, Model::Linear& lin) {
    if (!lin.adapter) return;
    rng.fill_normal(lin.adapter->lora_B.value, 0.0, 0.3);
    auto& g = lin.adapter->gate.value;
    if (module % 3 == 1) g(0, 1) = 0.0f;
    if (module == 4) g.setZero();
    ++module;
  });
  sora::model::Batch batch;
  batch.batch = 2;
  batch.seq = 6;
  for (int i = 0; i < 12; ++i) batch.tokens.push_back((i * 7) % 30);
  const sora::Matrix<float> expected = logits_of(trained, batch);

  const fs::path dir = fresh_dir("peft") / "adapter";
  const sora::io::PeftExportReport report = sora::io::export_peft_adapter(trained, dir);
  CHECK(report.modules.size() == 12);
  CHECK(report.exported_modules() == 11);
  CHECK(report.max_rank == 4);
  CHECK(report.modules[4].rank == 0);
  CHECK(report.modules[1].rank == 3);

  // The config: r = the largest rank, scaling lora_alpha / r = 1 everywhere.
  std::ifstream in(dir / sora::io::kPeftConfigFile);
  const auto config = nlohmann::json::parse(in);
  CHECK(config["peft_type"] == "LORA");
  CHECK(config["r"] == 4);
  CHECK(config["lora_alpha"] == 4);
  CHECK(config["rank_pattern"]["blocks.0.attn.k"] == 3);
  CHECK(config["alpha_pattern"]["blocks.0.attn.k"] == 3);
  CHECK_FALSE(config["rank_pattern"].contains(report.modules[4].module));
  const auto file = sora::io::SafetensorsFile::open(dir / sora::io::kPeftWeightsFile);
  CHECK(file.tensors().size() == 22);
  const auto& a = file.info("base_model.model.blocks.0.attn.k.lora_A.weight");
  CHECK(a.shape == sora::io::Shape{3, 16});
  const auto& b = file.info("base_model.model.blocks.1.mlp.fc.lora_B.weight");
  CHECK(b.shape == sora::io::Shape{64, 3});  // module 10: one gate zeroed

  Model fresh(c);  // the same base weights (same seed), no adapters
  fresh.apply_peft(sora::model::PeftConfig{sora::model::Method::lora});
  const sora::io::PeftImportReport imported = sora::io::import_peft_adapter(fresh, dir);
  CHECK(imported.modules.size() == 11);
  CHECK(imported.parameters == report.parameters);
  const sora::Matrix<float> got = logits_of(fresh, batch);
  CHECK((got - expected).cwiseAbs().maxCoeff() < 1e-5f);

  // A file that names a module the model does not have is rejected, model untouched.
  sora::model::TransformerConfig smaller = c;
  smaller.layers = 1;
  Model other(smaller);
  CHECK_THROWS_WITH_AS(sora::io::import_peft_adapter(other, dir),
                       doctest::Contains("module 'blocks.1.attn.q' is not in the model"),
                       sora::Error);
}

namespace {

// Every file under `dir` (relative path -> bytes), hidden ones included.
std::map<std::string, std::string> tree_bytes(const fs::path& dir) {
  std::map<std::string, std::string> files;
  if (!fs::exists(dir)) return files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    files[fs::relative(e.path(), dir).string()] =
        std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return files;
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

sora::model::TransformerConfig small_classifier() {
  sora::model::TransformerConfig c;
  c.vocab_size = 30;
  c.width = 16;
  c.heads = 2;
  c.layers = 1;
  c.max_len = 12;
  c.dropout = 0.0;
  c.head = sora::model::Head::classification;
  c.num_labels = 2;
  return c;
}

// Fails the atomic write whose target is named `name`, for the life of the object.
struct FailCommitOf {
  explicit FailCommitOf(std::string name) {
    sora::io::before_atomic_commit() = [name](const fs::path& target) {
      if (target.filename() == name) throw sora::Error("injected failure at " + name);
    };
  }
  ~FailCommitOf() { sora::io::before_atomic_commit() = nullptr; }
};

}  // namespace

TEST_CASE("peft adapter: the folder is replaced whole or not at all") {
  const fs::path root = fresh_dir("peft-txn");
  const fs::path dir = root / "adapter";
  Model model(small_classifier());
  sora::model::PeftConfig peft;
  peft.method = sora::model::Method::sora;
  peft.rank = 4;
  model.apply_peft(peft);
  sora::Rng rng(3);
  model.visit_linears([&](const std::string&, Model::Linear& lin) {
    if (lin.adapter) rng.fill_normal(lin.adapter->lora_B.value, 0.0, 0.3);
  });
  sora::io::export_peft_adapter(model, dir);
  const auto before = tree_bytes(dir);
  REQUIRE(before.size() == 2);

  // A rank-2 model whose config write fails after the weights were written (the kill between
  // adapter_model.safetensors and adapter_config.json): the old rank-4 folder stays.
  model.visit_linears([&](const std::string&, Model::Linear& lin) {
    if (lin.adapter) lin.adapter->gate.value.rightCols(2).setZero();
  });
  {
    FailCommitOf fail(sora::io::kPeftConfigFile);
    CHECK_THROWS_WITH_AS(sora::io::export_peft_adapter(model, dir),
                         doctest::Contains("injected failure"), sora::Error);
  }
  CHECK(tree_bytes(dir) == before);
  CHECK(names_in(root) == std::vector<std::string>{"adapter"});  // no temporary folder left
  // The swap of the folder itself failing: the same.
  {
    FailCommitOf fail("adapter");
    CHECK_THROWS_AS(sora::io::export_peft_adapter(model, dir), sora::Error);
  }
  CHECK(tree_bytes(dir) == before);
  CHECK(names_in(root) == std::vector<std::string>{"adapter"});

  // Non-finite weights (a diverged run) are refused; nothing changes.
  model.blocks[0].attn.q.adapter->lora_B.value(2, 1) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH_AS(sora::io::export_peft_adapter(model, dir),
                       doctest::Contains("refusing to write"), sora::Error);
  CHECK(tree_bytes(dir) == before);
  model.blocks[0].attn.q.adapter->lora_B.value(2, 1) = 0.5f;

  // Every rank pruned: nothing to export, nothing written (PEFT refuses target_modules []).
  model.visit_linears([&](const std::string&, Model::Linear& lin) {
    if (lin.adapter) lin.adapter->gate.value.setZero();
  });
  CHECK_THROWS_WITH_AS(sora::io::export_peft_adapter(model, dir),
                       doctest::Contains("every rank of all 6 adapted modules was pruned"),
                       sora::io::NothingToExport);
  CHECK(tree_bytes(dir) == before);

  // A successful export replaces the folder: now rank 2 everywhere, config and weights agree.
  model.visit_linears([&](const std::string&, Model::Linear& lin) {
    if (lin.adapter) lin.adapter->gate.value.leftCols(2).setOnes();
  });
  sora::io::export_peft_adapter(model, dir);
  std::ifstream in(dir / sora::io::kPeftConfigFile);
  CHECK(nlohmann::json::parse(in)["r"] == 2);
  const auto file = sora::io::SafetensorsFile::open(dir / sora::io::kPeftWeightsFile);
  CHECK(file.info("base_model.model.blocks.0.attn.q.lora_A.weight").shape ==
        sora::io::Shape{2, 16});
  CHECK(names_in(root) == std::vector<std::string>{"adapter"});
}

TEST_CASE(
    "finetune: a tiny end-to-end run writes consistent files and reuses its pretrained model") {
  const fs::path out = fresh_dir("e2e");
  Options o = tiny(out);
  o.compare = true;
  o.sparsity_schedule = true;
  o.stages = 2;
  o.xi0 = 0.01;
  o.xi_max = 0.1;
  o.dense_epochs = 1;
  o.stage_epochs = 1;
  std::ostringstream log;
  REQUIRE(run(o, log) == 0);
  CHECK(log.str().find("pretrained model: training") != std::string::npos);
  CHECK(log.str().find("method") != std::string::npos);

  std::ifstream sin(out / "summary.json");
  const auto summary = nlohmann::json::parse(sin);
  REQUIRE(summary["methods"].size() == 4);
  CHECK(summary["pretrain"]["reused"] == false);
  for (const auto& run_j : summary["runs"]) {
    CHECK(run_j["metric"].get<double>() >= 0.0);
    CHECK(run_j["metric"].get<double>() <= 1.0);
    CHECK(run_j["steps"] == 8);  // 2 epochs x 4 batches of 16
  }
  // metrics.csv: a header and 2 evaluations per run.
  std::ifstream csv(out / "metrics.csv");
  std::string line;
  std::getline(csv, line);
  CHECK(line == "method,seed,step,epoch,train_loss,val_metric,adapter_nonzero_params");
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  CHECK(rows == 8);
  // The SoRA adapter's ranks are the summary's.
  const auto& sora_run = summary["runs"][2];
  REQUIRE(sora_run["method"] == "sora");
  std::ifstream cin(out / "adapter_sora" / sora::io::kPeftConfigFile);
  const auto config = nlohmann::json::parse(cin);
  for (const auto& [module, rank] : sora_run["ranks"].items()) {
    if (rank.get<int>() == 0) {
      CHECK_FALSE(config["rank_pattern"].contains(module));
    } else {
      CHECK(config["rank_pattern"][module] == rank);
    }
  }
  CHECK(fs::exists(out / "sparsity.csv"));
  CHECK(summary["sparsity_schedule"]["rows"].get<int>() >= 3);

  // Second run: the cached pretrained model is reused, not trained again.
  Options again = tiny(out);
  std::ostringstream log2;
  REQUIRE(run(again, log2) == 0);
  CHECK(log2.str().find("pretrained model: reusing the cached") != std::string::npos);
  std::ifstream sin2(out / "summary.json");
  CHECK(nlohmann::json::parse(sin2)["pretrain"]["reused"] == true);
}

TEST_CASE("finetune: a failed write keeps the earlier adapter whole and marks the folder") {
  const fs::path out = fresh_dir("txn");
  Options o = tiny(out);
  o.method = "lora";
  std::ostringstream log;
  REQUIRE(run(o, log) == 0);
  CHECK_FALSE(fs::exists(out / kIncompleteMarker));
  const auto adapter_before = tree_bytes(out / "adapter");
  const auto metrics_before = tree_bytes(out)["metrics.csv"];
  REQUIRE(adapter_before.size() == 2);

  // A rank-4 run whose adapter config cannot be written (a kill or ENOSPC between the two
  // files): the rank-8 adapter stays as it was, the folder says it is incomplete, and no
  // summary of the earlier run is left to describe files it did not make.
  Options rank4 = o;
  rank4.rank = 4;
  {
    FailCommitOf fail(sora::io::kPeftConfigFile);
    CHECK_THROWS_WITH_AS(run(rank4, log), doctest::Contains("injected failure"), sora::Error);
  }
  CHECK(tree_bytes(out / "adapter") == adapter_before);
  CHECK(tree_bytes(out)["metrics.csv"] == metrics_before);
  CHECK(fs::exists(out / kIncompleteMarker));
  CHECK_FALSE(fs::exists(out / "summary.json"));
  for (const std::string& name : names_in(out)) CHECK_FALSE(is_temporary_name(name));

  // The optional sparsity phase failing: the finished runs' summary is there already.
  Options sparse = o;
  sparse.sparsity_schedule = true;
  sparse.stages = 1;
  sparse.dense_epochs = 1;
  sparse.stage_epochs = 1;
  {
    FailCommitOf fail("sparsity.csv");
    CHECK_THROWS_AS(run(sparse, log), sora::Error);
  }
  std::ifstream in(out / "summary.json");
  const auto summary = nlohmann::json::parse(in);
  CHECK(summary["runs"].size() == 1);
  CHECK(summary["sparsity_schedule"] == "running");
  CHECK(fs::exists(out / kIncompleteMarker));

  // A complete run: summary last, marker gone, every file of the run carries its id.
  REQUIRE(run(o, log) == 0);
  CHECK_FALSE(fs::exists(out / kIncompleteMarker));
  std::ifstream in2(out / "summary.json");
  const std::string id = nlohmann::json::parse(in2)["run_id"];
  const auto file = sora::io::SafetensorsFile::open(out / "adapter" / sora::io::kPeftWeightsFile);
  CHECK(file.metadata().at("sora.run_id") == id);
}

TEST_CASE("finetune: a run refuses a folder another run holds, naming its PID") {
  const fs::path out = fresh_dir("locked");
  const FolderLock held(out, "output folder (--out)");
  Options o = tiny(out);
  std::ostringstream log;
  const std::string expected = "is in use by PID " + std::to_string(::getpid());
  CHECK_THROWS_WITH_AS(run(o, log), doctest::Contains(expected.c_str()), sora::Error);
  CHECK(names_in(out) == std::vector<std::string>{kLockFile});  // nothing else was made
}

TEST_CASE("finetune: run ids, temporary names and UTF-8 paths") {
  CHECK(new_run_id() != "");
  CHECK(is_temporary_name(".adapter.tmp.AbC123"));
  CHECK(is_temporary_name(".summary.json.tmp.x1Y2z3"));
  CHECK(is_temporary_name(".adapter.old.q9W8e7"));
  CHECK_FALSE(is_temporary_name("adapter.tmp.AbC123"));
  CHECK_FALSE(is_temporary_name(".tmp.AbC123"));
  CHECK_FALSE(is_temporary_name("notes.tmp.txt"));
  CHECK(is_utf8("plain/ascii"));
  CHECK(is_utf8("caf\xc3\xa9/\xe2\x82\xac"));
  CHECK_FALSE(is_utf8("bad\xff"));
  CHECK_FALSE(is_utf8("cut\xc3"));
  CHECK_FALSE(is_utf8("overlong\xc0\xaf"));
  CHECK_FALSE(is_utf8("surrogate\xed\xa0\x80"));
}

TEST_CASE("finetune cache: metadata and checksum are checked, with named errors") {
  const fs::path dir = fresh_dir("cache-meta");
  sora::Matrix<float> w(2, 3);
  w << 1, 2, 3, 4, 5, 6;
  const std::string sum = tensor_checksum({{"w", std::vector<float>(w.data(), w.data() + 6)}});
  const auto write = [&](const std::map<std::string, std::string>& metadata) {
    sora::io::SafetensorsWriter writer;
    writer.add("w", w, sora::io::Dtype::F32);
    for (const auto& [k, v] : metadata) writer.set_metadata(k, v);
    writer.write(dir / "cache.safetensors");
  };
  write({{"sora.pretrain_key", "k"}, {"sora.checksum", sum}, {"sora.verdict_accuracy", "0.75"}});
  CHECK(read_cached_pretraining(dir / "cache.safetensors", "k") == 0.75);
  CHECK_FALSE(read_cached_pretraining(dir / "cache.safetensors", "other key").has_value());
  write({{"sora.pretrain_key", "k"}, {"sora.checksum", sum}, {"sora.verdict_accuracy", "abc"}});
  CHECK_THROWS_WITH_AS(read_cached_pretraining(dir / "cache.safetensors", "k"),
                       doctest::Contains("metadata 'sora.verdict_accuracy' is not a number"),
                       sora::Error);
  write({{"sora.pretrain_key", "k"}, {"sora.checksum", "0123456789abcdef"}});
  CHECK_THROWS_WITH_AS(read_cached_pretraining(dir / "cache.safetensors", "k"),
                       doctest::Contains("the file is damaged"), sora::Error);
  write({{"sora.pretrain_key", "k"}});
  CHECK_THROWS_WITH_AS(read_cached_pretraining(dir / "cache.safetensors", "k"),
                       doctest::Contains("'sora.checksum' is missing"), sora::Error);
  // A NaN cached by an older version, with a checksum that matches it: refused all the same.
  w(1, 2) = std::nanf("");
  write({{"sora.pretrain_key", "k"},
         {"sora.checksum", tensor_checksum({{"w", std::vector<float>(w.data(), w.data() + 6)}})}});
  CHECK_THROWS_WITH_AS(read_cached_pretraining(dir / "cache.safetensors", "k"),
                       doctest::Contains("tensor 'w' holds a NaN or an infinity"), sora::Error);
}

TEST_CASE("finetune --model: flags that do not apply are errors up front, naming the flag") {
  const fs::path dir = fresh_dir("model-flags");
  const std::string d = dir.string();
  Parsed p = parse({"--model", d.c_str(), "--device", "cuda"});
  CHECK(p.code == 2);
  CHECK(p.err.find("--device cuda: --model fine-tunes on the CPU only") != std::string::npos);
  p = parse({"--target-modules", "query"});
  CHECK(p.code == 2);
  CHECK(p.err.find("--target-modules needs --model") != std::string::npos);
  p = parse({"--model", "/nonexistent/model"});
  CHECK(p.code.has_value());
  CHECK(p.err.find("--model") != std::string::npos);
  // sora's own model's shape flags do not bound a pre-trained model's rank or targets.
  p = parse({"--model", d.c_str(), "--rank", "64", "--target-modules", "all-linear", "--max-length",
             "64"});
  CHECK_FALSE(p.code.has_value());
  CHECK(p.options.pretrained());
  CHECK(p.options.max_len == 64);
}

#ifdef SORA_FINETUNE_TEXT
TEST_CASE("finetune --model: the task's texts are encoded by the folder's tokenizer") {
  // A BERT folder with a WordPiece vocab.txt of the synthetic language's words: every word is
  // one token, so the encoding is [CLS] words [SEP] (words [SEP]).
  const fs::path dir = fresh_dir("model-tokenize");
  const Lexicon lex;
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (int v = 3; v < lex.size(); ++v) vocab.push_back(lex.word(v).text);
  {
    std::ofstream f(dir / "vocab.txt");
    for (const std::string& w : vocab) f << w << "\n";
    std::ofstream c(dir / "config.json");
    c << R"({"model_type": "bert", "vocab_size": )" << vocab.size()
      << R"(, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 16, "max_position_embeddings": 64, "pad_token_id": 0})";
  }
  TaskData pair = synthetic_task("pair", 3, 8, 4, 4);
  const Example before = pair.train[0];
  const PretrainedInfo info = tokenize_for_model(pair, dir, 64);
  CHECK(info.config.family == hf::Family::bert);
  CHECK(pair.token_types);
  CHECK(pair.pad_token == 0);
  // <s> a <sep> b  ->  [CLS] a [SEP] b [SEP]: one more token, the types 0 then 1.
  const Example& e = pair.train[0];
  REQUIRE(e.tokens.size() == before.tokens.size() + 1);
  CHECK(e.tokens.front() == 2);
  CHECK(e.tokens.back() == 3);
  REQUIRE(e.types.size() == e.tokens.size());
  CHECK(e.types.front() == 0);
  CHECK(e.types.back() == 1);
  std::size_t words = 0;
  for (std::size_t i = 1; i + 1 < e.tokens.size(); ++i) {
    if (e.tokens[i] == 3) continue;  // the [SEP] between the two texts
    ++words;
    CHECK(vocab[static_cast<std::size_t>(e.tokens[i])] == lex.word(before.tokens[i]).text);
  }
  CHECK(words + 3 == e.tokens.size());  // every token but [CLS] and the two [SEP]s was checked
  // Batches carry the types, padded with 0 beside the padding tokens.
  sora::model::Batch batch;
  const std::vector<std::size_t> order = {0, 1, 2};
  fill_batch(batch, pair, pair.train, order);
  REQUIRE(batch.token_types.size() == batch.tokens.size());
  CHECK(std::equal(e.types.begin(), e.types.end(), batch.token_types.begin()));
  // --max-length truncates (longest first on a pair), and is checked against the positions.
  TaskData shortened = synthetic_task("pair", 3, 8, 4, 4);
  tokenize_for_model(shortened, dir, 8);
  for (const Example& x : shortened.train) CHECK(x.tokens.size() <= 8);
  TaskData too_long = synthetic_task("polarity", 3, 8, 4, 4);
  CHECK_THROWS_WITH_AS(tokenize_for_model(too_long, dir, 128),
                       doctest::Contains("--max-length 128 exceeds the model's 64 positions"),
                       sora::Error);
}
#endif

TEST_CASE("finetune --grad-accum: one step's gradient is the mean of its batches' gradients") {
  const fs::path out = fresh_dir("grad-accum");
  std::ostringstream log;
  const Setup s = make_setup(tiny(out), log);
  Model model(s.task_config);
  model.apply_peft(peft_config(s.opt, sora::model::Method::lora, 1));
  const auto grads = [&] {
    std::vector<sora::Matrix<float>> g;
    model.visit_params([&](sora::Param<float>& p) {
      if (p.trainable()) g.push_back(p.gradient());
    });
    return g;
  };
  const auto zero = [&] { model.visit_params([](sora::Param<float>& p) { p.zero_grad(); }); };
  BatchStream stream(s.task, 8, 5);
  BatchStream replay = stream;  // the same batches, one at a time
  zero();
  const sora::model::Batch first = replay.next();
  const double l1 = model.forward(first);
  model.backward();
  const auto g1 = grads();
  zero();
  const double l2 = model.forward(replay.next());
  model.backward();
  const auto g2 = grads();

  zero();
  Accumulating<Model> accumulating(model, 2, stream);
  const double loss = accumulating.forward(stream.next());
  accumulating.backward();
  const auto g = grads();
  CHECK(loss == doctest::Approx((l1 + l2) / 2).epsilon(1e-6));
  REQUIRE(g.size() == g1.size());
  for (std::size_t i = 0; i < g.size(); ++i)
    CHECK((g[i] - (g1[i] + g2[i]) * 0.5f).cwiseAbs().maxCoeff() <= 1e-6f);
}

namespace {

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

}  // namespace

TEST_CASE("finetune data files: TSV and JSONL, class indices, class names, regression, pairs") {
  const fs::path dir = fresh_dir("data-files");
  DataColumns c;
  SUBCASE("TSV with class names, columns in any order, CRLF and a trailing blank line") {
    write_text(dir / "train.tsv", "id\tlabel\ttext\r\n1\tpos\tgood film\r\n2\tneg\tbad\r\n\r\n");
    write_text(dir / "dev.tsv", "text\tlabel\nfine\tneu\n");
    const TaskData t = file_task(dir / "train.tsv", dir / "dev.tsv", {}, c, 32, 0, 0);
    CHECK(t.name == "train");
    CHECK_FALSE(t.regression);
    CHECK(t.num_labels == 3);  // neg, neu, pos in sorted order
    REQUIRE(t.train.size() == 2);
    CHECK(t.train[0].label == 2);
    CHECK(t.train[1].label == 0);
    CHECK(t.val[0].label == 1);
    CHECK(t.train[0].text_a == "good film");
    CHECK(t.train[0].text_b.empty());
    // Byte-level: [CLS] bytes [SEP].
    CHECK(t.train[1].tokens.size() == 3 + 2);
    CHECK(t.test.empty());
    CHECK(t.source.find("0 = neg, 1 = neu, 2 = pos") != std::string::npos);
  }
  SUBCASE("JSONL pairs with integer labels, renamed columns, caps") {
    c.text = "premise";
    c.text_pair = "hypothesis";
    c.label = "y";
    write_text(dir / "a.jsonl",
               "{\"premise\": \"a\", \"hypothesis\": \"b\", \"y\": 0}\n"
               "{\"premise\": \"c\", \"hypothesis\": \"d\", \"y\": 4}\n"
               "{\"premise\": \"e\", \"hypothesis\": \"f\", \"y\": 1}\n");
    write_text(dir / "b.jsonl", "{\"premise\": \"x\", \"hypothesis\": \"y\", \"y\": \"1\"}\n");
    const TaskData t = file_task(dir / "a.jsonl", dir / "b.jsonl", dir / "b.jsonl", c, 32, 2, 0);
    CHECK(t.num_labels == 5);  // classes 0..4 (the cap does not change the label set)
    REQUIRE(t.train.size() == 2);
    CHECK(t.train[1].label == 4);
    CHECK(t.train[1].text_b == "d");
    CHECK(t.test.size() == 1);
    CHECK(t.val[0].label == 1);
  }
  SUBCASE("numbers that are not all class indices make a regression task") {
    write_text(dir / "r.jsonl",
               "{\"text\": \"a\", \"label\": 0.5}\n{\"text\": \"b\", \"label\": 2}\n");
    const TaskData t = file_task(dir / "r.jsonl", dir / "r.jsonl", {}, c, 32, 0, 0);
    CHECK(t.regression);
    CHECK(t.num_labels == 1);
    CHECK(t.metric == Metric::pearson);
    CHECK(t.train[0].value == doctest::Approx(0.5).epsilon(1e-15));
  }
  SUBCASE("errors name the flag, the file, the line and the column") {
    write_text(dir / "ok.tsv", "text\tlabel\na\t0\nb\t1\n");
    write_text(dir / "nocol.tsv", "sentence\tlabel\na\t0\n");
    CHECK_THROWS_WITH_AS(file_task(dir / "nocol.tsv", dir / "ok.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("--train-file"), sora::Error);
    CHECK_THROWS_WITH_AS(file_task(dir / "nocol.tsv", dir / "ok.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("no column --text-column 'text'"), sora::Error);
    write_text(dir / "fields.tsv", "text\tlabel\na\t0\tz\n");
    CHECK_THROWS_WITH_AS(file_task(dir / "ok.tsv", dir / "fields.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("--val-file"), sora::Error);
    CHECK_THROWS_WITH_AS(file_task(dir / "ok.tsv", dir / "fields.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("line 2 has 3 tab-separated fields, the header 2"),
                         sora::Error);
    write_text(dir / "mixed.jsonl",
               "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"text_pair\": \"c\", "
               "\"label\": 1}\n");
    CHECK_THROWS_WITH_AS(file_task(dir / "mixed.jsonl", dir / "ok.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("line 2 has a \"text_pair\" field"), sora::Error);
    write_text(dir / "bad.jsonl", "{\"text\": \"a\", \"label\": 0}\n[1, 2]\n");
    CHECK_THROWS_WITH_AS(file_task(dir / "bad.jsonl", dir / "ok.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("line 2 is not a JSON object"), sora::Error);
    write_text(dir / "nolabel.jsonl", "{\"text\": \"a\"}\n");
    CHECK_THROWS_WITH_AS(file_task(dir / "nolabel.jsonl", dir / "ok.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("line 1 has no \"label\""), sora::Error);
    write_text(dir / "one.tsv", "text\tlabel\na\tx\nb\tx\n");
    CHECK_THROWS_WITH_AS(file_task(dir / "one.tsv", dir / "one.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("a single class"), sora::Error);
    write_text(dir / "data.csv", "text,label\n");
    CHECK_THROWS_WITH_AS(file_task(dir / "data.csv", dir / "ok.tsv", {}, c, 32, 0, 0),
                         doctest::Contains("unknown format '.csv'"), sora::Error);
  }
  SUBCASE("flags: --train-file needs --val-file, and excludes --glue-dir") {
    write_text(dir / "ok.tsv", "text\tlabel\na\t0\nb\t1\n");
    const std::string f = (dir / "ok.tsv").string();
    Parsed p = parse({"--train-file", f.c_str()});
    CHECK(p.code == 2);
    CHECK(p.err.find("--train-file and --val-file go together") != std::string::npos);
    const std::string d = dir.string();
    p = parse({"--train-file", f.c_str(), "--val-file", f.c_str(), "--glue-dir", d.c_str()});
    CHECK(p.code == 2);
    CHECK(p.err.find("two data sources") != std::string::npos);
    p = parse({"--train-file", f.c_str(), "--val-file", f.c_str(), "--task", "nonsense"});
    CHECK_FALSE(p.code.has_value());
    CHECK(p.options.files());
    CHECK_FALSE(p.options.synthetic());
  }
}

TEST_CASE("finetune --export-task: the embedded task as a GLUE folder reads back the same") {
  const fs::path dir = fresh_dir("export-task");
  for (const std::string task : {"polarity", "pair"}) {
    Options o;
    o.task = task;
    o.train_size = 20;
    o.val_size = 10;
    o.test_size = 5;
    o.export_task = (dir / task).string();
    std::ostringstream log;
    CHECK(run(o, log) == 0);
    const TaskData want = make_setup(o, log).task;
    const auto glue = task == "pair" ? sora::io::GlueTask::RTE : sora::io::GlueTask::SST2;
    const TaskData got = glue_task(dir / task, glue, 64, 0, 0);
    REQUIRE(got.train.size() == want.train.size());
    REQUIRE(got.val.size() == want.val.size());
    for (std::size_t i = 0; i < want.train.size(); ++i) {
      CHECK(got.train[i].text_a == want.train[i].text_a);
      CHECK(got.train[i].text_b == want.train[i].text_b);
      // RTE's label 0 is "entailment": the same sentiment (the embedded pair task's 1).
      CHECK(got.train[i].label == (task == "pair" ? 1 - want.train[i].label : want.train[i].label));
    }
    CHECK(fs::exists(dir / task / "test.tsv"));
  }
  Options o;
  o.task = "score";
  o.export_task = (dir / "score").string();
  std::ostringstream log;
  CHECK_THROWS_WITH_AS(run(o, log), doctest::Contains("regression task 'score'"), sora::Error);
  CHECK_FALSE(fs::exists(dir / "score"));
}

TEST_CASE("finetune rank heat map: layers and module kinds from any model's module names") {
  RunResult r;
  r.method = "sora";
  r.ranks = {{"bert.encoder.layer.0.attention.self.query", 3},
             {"bert.encoder.layer.0.attention.self.value", 5},
             {"bert.encoder.layer.1.attention.self.query", 7},
             {"classifier", 2}};
  const std::string svg = rank_heatmap(r);
  for (const char* label : {"layer 0", "layer 1", "other", "attention.self.query",
                            "attention.self.value", "classifier"})
    CHECK_MESSAGE(svg.find(label) != std::string::npos, label);
  CHECK(svg.find("layer 2") == std::string::npos);
  r.ranks = {{"blocks.0.attn.q", 4}, {"blocks.1.mlp.fc", 1}};
  const std::string own = rank_heatmap(r);
  CHECK(own.find("attn.q") != std::string::npos);
  CHECK(own.find("mlp.fc") != std::string::npos);
  CHECK(own.find("other") == std::string::npos);
}
