// sora-finetune's logic (examples/finetune/*.hpp) and the PEFT adapter files it writes
// (io/peft_adapter.hpp): argument parsing and its errors, export -> import -> identical
// outputs, a tiny end-to-end run whose files are read back, and the pretraining cache.

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "finetune.hpp"

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
  const fs::path dir = fs::temp_directory_path() / ("sora-finetune-test-" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
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

TEST_CASE("finetune options: defaults parse and name the embedded polarity task") {
  const Parsed p = parse({});
  CHECK_FALSE(p.code.has_value());
  CHECK(p.options.method == "sora");
  CHECK(p.options.task == "polarity");
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
      {{"--no-such-flag"}, "--no-such-flag"},
  };
  for (const Case& c : cases) {
    const Parsed p = parse(c.args);
    INFO("args: ", c.args.front(), " -> ", p.err);
    REQUIRE(p.code.has_value());
    CHECK(*p.code != 0);
    CHECK(p.err.find(c.flag) != std::string::npos);
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
