// Checkpoints: N steps, save, load into a freshly built model and optimizer, N more steps
// must equal 2N steps straight, bit for bit, for every method (dropout on, so the RNG
// streams matter; SoRA with gates dying; AdaLoRA allocating on both sides of the save).
// A failed save leaves the earlier file as it was; a mismatched or truncated file is
// rejected with every problem listed.

#include <doctest/doctest.h>
#include <sys/resource.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "sora/io/checkpoint.hpp"
#include "sora/io/model_file.hpp"
#include "sora/model/config_file.hpp"
#include "sora/model/frozen_base.hpp"
#include "sora/model/transformer.hpp"
#include "sora/optim/adalora.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/prune/prune.hpp"
#include "sora/train/trainer.hpp"
#include "support/temp_dir.hpp"

using namespace sora;

namespace {

constexpr long kHalf = 10;  // N: steps before and after the save

std::filesystem::path temp_dir(const std::string& name) {
  return sora::testing::unique_temp_dir("sora-ckpt-" + name);
}

std::vector<char> file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

model::TransformerConfig config(std::uint64_t seed, Index width = 16) {
  model::TransformerConfig c;
  c.vocab_size = 16;
  c.width = width;
  c.heads = 2;
  c.layers = 2;
  c.ffn_width = 32;
  c.max_len = 8;
  c.causal = false;
  c.dropout = 0.1;
  c.head = model::Head::classification;
  c.num_labels = 2;
  c.seed = seed;
  return c;
}

std::vector<model::Batch> batches() {
  Rng rng(3, 0);
  std::vector<model::Batch> out(4);
  for (auto& b : out) {
    b.batch = 4;
    b.seq = 8;
    for (int i = 0; i < 32; ++i) b.tokens.push_back(static_cast<int>(rng.below(16)));
    for (int i = 0; i < 4; ++i) b.labels.push_back(static_cast<int>(rng.below(2)));
  }
  return out;
}

optim::LrSchedule schedule() {
  return optim::LrSchedule(optim::LrScheduleKind::warmup_linear, 1e-2, 3, 2 * kHalf);
}

// A model and its optimizer, built in place (the model can be neither copied nor moved).
// `seed` changes every initial value: a resumed run must owe nothing to its construction.
struct Setup {
  model::Transformer<float> model;
  std::optional<optim::FineTuneOptimizer<float>> fine_tune;
  std::optional<optim::AdaLoraOptimizer<float>> adalora;

  Setup(model::Method method, std::uint64_t seed, Index rank = 4, Index width = 16,
        Precision frozen_base = Precision::fp32)
      : model(config(seed, width)) {
    model::PeftConfig peft;
    peft.method = method;
    peft.rank = rank;
    peft.alpha = 8.0;
    peft.dropout = 0.1;
    peft.seed = seed;
    model.apply_peft(peft);
    if (frozen_base == Precision::bf16) model::store_frozen_base(model, Precision::bf16);
    if (method == model::Method::adalora) {
      optim::AdamWOptions a;
      a.lr = 1e-2;
      a.weight_decay = 0.01;
      optim::AdaLoraOptions o;
      // Allocations at steps 4, 6, 8, 10, 12, the final one at 14: on both sides of step 10.
      o.total_steps = 2 * kHalf;
      o.t_init = 2;
      o.t_final = 6;
      o.delta_t = 2;
      o.target_rank = 2;
      adalora.emplace(model, a, o);
    } else {
      optim::FineTuneOptions fo;
      fo.lr = 1e-2;
      // Large enough for gates to die within a few steps.
      fo.xi = method == model::Method::sora ? 0.05 : 0.0;
      fine_tune.emplace(optim::FineTuneOptimizer<float>::for_model(model, fo));
    }
  }

  // The steps [from, to) of a run, through train::fit resuming at `from`.
  template <class Opt>
  void run(Opt& opt, long from, long to) {
    const auto data = batches();
    train::TrainerOptions t;
    t.start_step = from;
    t.max_steps = to;
    t.max_grad_norm = 1.0;
    t.schedule = schedule();
    train::fit<model::Transformer<float>>(
        model, opt,
        [&](long step) -> const model::Batch& {
          return data[static_cast<std::size_t>(step) % data.size()];
        },
        {}, t);
  }
  void steps(long from, long to) {
    if (adalora) {
      run(*adalora, from, to);
    } else {
      run(*fine_tune, from, to);
    }
  }
  void save(const std::filesystem::path& path, const io::TrainingState& state) {
    if (adalora) {
      io::save_checkpoint(path, model, *adalora, state);
    } else {
      io::save_checkpoint(path, model, *fine_tune, state);
    }
  }
  io::TrainingState load(const std::filesystem::path& path) {
    if (adalora) return io::load_checkpoint(path, model, *adalora);
    return io::load_checkpoint(path, model, *fine_tune);
  }
  // The learning rates the optimizers would step with now (AdamW's, then the gates').
  std::vector<double> lrs() const {
    if (adalora) return {adalora->lr()};
    return {fine_tune->adamw().lr(), fine_tune->gate_optimizer().lr()};
  }
  std::vector<Matrix<float>> values() {
    std::vector<Matrix<float>> out;
    model.visit_params([&](Param<float>& p) {
      out.emplace_back(p.rows(), p.cols());
      p.copy_value_to(out.back());  // a bf16 weight widened
    });
    return out;
  }
  Index dead_gates() {
    Index dead = 0;
    model.visit_params([&](Param<float>& p) {
      if (p.name.ends_with(".lora_gate") || p.name.ends_with(".lora_E"))
        dead += (p.value.array() == 0.0f).count();
    });
    return dead;
  }
};

io::TrainingState run_state(long step) {
  io::TrainingState s;
  s.step = step;
  s.schedule = schedule();
  s.xi = 0.1 + 1e-17;  // not a short decimal: must come back exactly
  Rng data(11, 4);
  for (int i = 0; i < 5; ++i) data.normal();  // leaves a spare normal cached
  s.rngs["data"] = data.state();
  s.metadata["task"] = "sst2";
  return s;
}

bool bit_equal(const Matrix<float>& a, const Matrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

void check_resume(model::Method method, Precision frozen_base = Precision::fp32) {
  const auto dir = temp_dir(model::method_name(method));
  const auto path = dir / "ckpt.safetensors";

  Setup straight(method, 7, 4, 16, frozen_base);
  straight.steps(0, 2 * kHalf);

  Setup first(method, 7, 4, 16, frozen_base);
  first.steps(0, kHalf);
  if (method == model::Method::sora) CHECK(first.dead_gates() > 0);
  if (method == model::Method::adalora) CHECK_FALSE(first.adalora->allocator().finalized());
  first.save(path, run_state(kHalf));
  // A bf16 base is widened for the file only.
  CHECK(model::frozen_base_precision(first.model) == frozen_base);

  Setup resumed(method, 99, 4, 16, frozen_base);
  const io::TrainingState st = resumed.load(path);
  CHECK(model::frozen_base_precision(resumed.model) == frozen_base);
  const io::TrainingState want = run_state(kHalf);
  CHECK(st.step == kHalf);
  CHECK(st.xi == want.xi);
  CHECK(st.schedule.kind() == want.schedule.kind());
  CHECK(st.schedule.base_lr() == want.schedule.base_lr());
  CHECK(st.schedule.warmup() == want.schedule.warmup());
  CHECK(st.schedule.total() == want.schedule.total());
  CHECK(st.rngs == want.rngs);
  CHECK(st.metadata == want.metadata);
  // The optimizers' rates come back as saved. fit sets them again from the schedule on its
  // next step, so only this look can tell a restored rate from a reset one: the saved rates
  // (mid-schedule) differ from the constructor's base rate the fresh optimizer started with.
  const std::vector<double> saved_lrs = first.lrs();
  CHECK(resumed.lrs() == saved_lrs);
  for (double lr : saved_lrs) CHECK(lr != 1e-2);
  resumed.steps(kHalf, 2 * kHalf);

  if (method == model::Method::sora) CHECK(resumed.dead_gates() > first.dead_gates());
  if (method == model::Method::adalora) {
    CHECK(resumed.adalora->allocator().finalized());
    CHECK(resumed.adalora->allocator().rank_pattern() ==
          straight.adalora->allocator().rank_pattern());
  }
  const auto a = straight.values();
  const auto b = resumed.values();
  REQUIRE(a.size() == b.size());
  std::size_t equal = 0;
  for (std::size_t i = 0; i < a.size(); ++i) equal += bit_equal(a[i], b[i]) ? 1 : 0;
  CHECK(equal == a.size());
  // And the run did move: a resume that restored nothing would not be equal by accident.
  Setup untrained(method, 7);
  CHECK_FALSE(bit_equal(untrained.values().back(), a.back()));
  std::filesystem::remove_all(dir);
}

std::string load_error(Setup& s, const std::filesystem::path& path) {
  try {
    s.load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("checkpoint resume is bit-exact: full fine-tuning") {
  check_resume(model::Method::full);
}

TEST_CASE("checkpoint resume is bit-exact: LoRA") {
  check_resume(model::Method::lora);
}

TEST_CASE("checkpoint resume is bit-exact: SoRA with gates dying") {
  check_resume(model::Method::sora);
}

TEST_CASE("checkpoint resume is bit-exact: AdaLoRA allocating before and after the save") {
  check_resume(model::Method::adalora);
}

TEST_CASE("checkpoint resume is bit-exact: SoRA on a frozen base stored in bf16") {
  check_resume(model::Method::sora, Precision::bf16);
}

TEST_CASE("a failed checkpoint save leaves the earlier checkpoint byte-identical") {
  const auto dir = temp_dir("failed");
  const auto path = dir / "ckpt.safetensors";
  Setup s(model::Method::sora, 7);
  s.steps(0, 2);
  s.save(path, run_state(2));
  const std::vector<char> before = file_bytes(path);
  s.steps(2, 4);

  // Into a directory that does not exist.
  CHECK_THROWS_AS(s.save(dir / "missing" / "ckpt.safetensors", run_state(4)), Error);

  // Metadata that cannot be encoded (not UTF-8): fails before anything is written.
  io::TrainingState bad = run_state(4);
  bad.metadata["note"] = "\xff\xfe";
  CHECK_THROWS_AS(s.save(path, bad), Error);
  CHECK(file_bytes(path) == before);

  // A write that fails half-way: the file-size limit makes write() return EFBIG.
  rlimit old{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 4096;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::string message;
  try {
    s.save(path, run_state(4));
  } catch (const Error& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  CHECK(contains(message, "cannot write"));
  CHECK(file_bytes(path) == before);

  // A diverged model (a NaN weight): refused before any file is made, naming the tensor.
  const float kept = s.model.blocks[1].attn.v.adapter->lora_A.value(1, 2);
  s.model.blocks[1].attn.v.adapter->lora_A.value(1, 2) = std::nanf("");
  message.clear();
  try {
    s.save(path, run_state(4));
  } catch (const Error& e) {
    message = e.what();
  }
  s.model.blocks[1].attn.v.adapter->lora_A.value(1, 2) = kept;
  CHECK(contains(message, "refusing to write"));
  CHECK(contains(message, "blocks.1.attn.v.lora_A"));
  CHECK(contains(message, "nan at (1, 2)"));
  CHECK(file_bytes(path) == before);

  // No temporary left behind: the directory holds the one checkpoint.
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    names.push_back(e.path().filename().string());
  CHECK(names == std::vector<std::string>{"ckpt.safetensors"});

  // And the earlier checkpoint still loads.
  Setup fresh(model::Method::sora, 1);
  CHECK(fresh.load(path).step == 2);
  std::filesystem::remove_all(dir);
}

TEST_CASE("loading a mismatched checkpoint lists every problem and changes nothing") {
  const auto dir = temp_dir("mismatch");
  const auto lora_path = dir / "lora.safetensors";
  Setup lora(model::Method::lora, 7);
  lora.save(lora_path, run_state(0));

  // Another method: adapters of another kind, gates and their optimizer state missing.
  Setup sora_model(model::Method::sora, 8);
  const auto before = sora_model.values();
  const std::string e1 = load_error(sora_model, lora_path);
  CHECK(contains(e1, "problems):"));
  CHECK(contains(e1, "module 'blocks.0.attn.q': adapter 'lora"));
  CHECK(contains(e1, "module 'blocks.1.mlp.proj': adapter 'lora"));
  CHECK(contains(e1, "missing tensor 'model.blocks.0.attn.q.lora_gate' (expected [4])"));
  CHECK(contains(e1, "missing tensor 'optim.gates.blocks.1.mlp.fc.lora_gate.exp_avg'"));
  const auto after = sora_model.values();
  for (std::size_t i = 0; i < before.size(); ++i) CHECK(bit_equal(before[i], after[i]));

  // Another rank: one line per module naming it, not one per tensor.
  Setup rank2(model::Method::lora, 7, 2);
  const std::string e2 = load_error(rank2, lora_path);
  CHECK(contains(e2, "module 'blocks.0.attn.q': adapter rank=4 in the checkpoint, rank=2"));
  CHECK(contains(e2, "module 'blocks.1.mlp.fc': adapter rank=4"));
  CHECK_FALSE(contains(e2, "lora_A' has shape"));

  // Another width: misshapen tensors.
  Setup wide(model::Method::lora, 7, 4, 32);
  const std::string e3 = load_error(wide, lora_path);
  CHECK(contains(e3, "tensor 'model.wte.weight' has shape [16, 16], expected [16, 32]"));
  CHECK(contains(e3, "tensor 'model.blocks.0.attn.q.lora_A' has shape [4, 16], expected [4, 32]"));

  // Another optimizer and method: full fine-tuning's file into AdaLoRA.
  const auto full_path = dir / "full.safetensors";
  Setup full(model::Method::full, 7);
  full.save(full_path, run_state(0));
  Setup ada(model::Method::adalora, 7);
  const std::string e4 = load_error(ada, full_path);
  CHECK(contains(e4, "the checkpoint's optimizer is 'finetune', this one is 'adalora'"));
  CHECK(contains(e4, "missing tensor 'adalora.blocks.0.attn.q.E.sensitivity'"));
  CHECK(contains(e4, "unexpected tensor 'optim.adamw.blocks.0.attn.q.weight.exp_avg'"));
  CHECK(contains(e4, "missing metadata 'adalora.blocks.0.attn.q.rank_pattern'"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("a truncated checkpoint is rejected with the reader's error") {
  const auto dir = temp_dir("truncated");
  const auto path = dir / "ckpt.safetensors";
  Setup s(model::Method::lora, 7);
  s.save(path, run_state(0));
  const std::vector<char> bytes = file_bytes(path);
  for (const std::size_t keep :
       {bytes.size() - 1, bytes.size() / 2, std::size_t{100}, std::size_t{4}}) {
    const auto cut = dir / "cut.safetensors";
    {
      std::ofstream out(cut, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(keep));
    }
    std::string reader;
    try {
      io::SafetensorsFile::open(cut);
    } catch (const Error& e) {
      reader = e.what();
    }
    CAPTURE(keep);
    REQUIRE_FALSE(reader.empty());
    Setup fresh(model::Method::lora, 1);
    CHECK(load_error(fresh, cut) == reader);
  }
  std::filesystem::remove_all(dir);
}

// ---- whole models: io::save_model / io::load_model, model::from_config ----------------------

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("save_model / load_model round trip: adapters, pruned ranks, merged, trainable flags") {
  const auto dir = temp_dir("model");
  Setup trained(model::Method::sora, 7);
  trained.steps(0, kHalf);  // ξ = 0.05: some gates die
  // One module pruned (a smaller rank, ungated), one merged into its base weight.
  Index kept = 0;
  trained.model.visit_linears([&](const std::string& name, nn::AdaptedLinear<float>& lin) {
    if (name == "blocks.0.attn.q") kept = prune::prune(lin);
    if (name == "blocks.1.mlp.fc") prune::merge(lin);
  });
  io::save_model(dir / "saved", trained.model);

  const auto loaded = io::load_model<float>(dir / "saved");
  CHECK(loaded->config().width == trained.model.config().width);
  CHECK(loaded->config().seed == trained.model.config().seed);
  // The same parameters, values bit for bit, trainable where they were.
  const auto a = sora::parameters(trained.model);
  const auto b = sora::parameters(*loaded);
  REQUIRE(a.size() == b.size());
  std::size_t same = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    same += a[i]->name == b[i]->name && a[i]->role == b[i]->role &&
            a[i]->trainable() == b[i]->trainable() && bit_equal(a[i]->value, b[i]->value);
  CHECK(same == a.size());
  const nn::AdaptedLinear<float>& q = loaded->blocks[0].attn.q;
  if (kept > 0) {
    REQUIRE(q.adapter);
    CHECK(q.adapter->rank() == kept);
    CHECK_FALSE(q.adapter->gated());
    CHECK(q.adapter->r_max() == 4);
  } else {
    CHECK_FALSE(q.adapter);
  }
  CHECK(loaded->blocks[1].mlp.fc.merged());
  // And it computes what the saved model computes, in eval mode.
  trained.model.eval();
  const auto data = batches();
  trained.model.forward_logits(data[0]);
  loaded->forward_logits(data[0]);
  CHECK(bit_equal(trained.model.logits(), loaded->logits()));
  // A loaded model takes a fresh optimizer: its trainable parameters are the saved ones.
  auto opt = optim::FineTuneOptimizer<float>::for_model(*loaded, optim::FineTuneOptions{});
  CHECK(opt.params().size() == trained.model.trainable_parameters().size());
  std::filesystem::remove_all(dir);
}

TEST_CASE("load_model lists every problem of a damaged config.json") {
  const auto dir = temp_dir("model_bad");
  Setup s(model::Method::lora, 3);
  io::save_model(dir / "m", s.model);
  const auto config = dir / "m" / "config.json";
  std::ifstream in(config);
  nlohmann::json j = nlohmann::json::parse(in);
  in.close();
  j["adapters"]["blocks.9.attn.q"] = j["adapters"]["blocks.0.attn.q"];
  j["adapters"]["blocks.0.attn.k"]["rank"] = "4";
  j["trainable"].push_back("blocks.0.attn.q.lora_C");
  std::ofstream(config) << j.dump();
  const std::string message = error_of([&] { io::load_model<float>(dir / "m"); });
  CHECK(contains(message, "'blocks.9.attn.q', which is not a linear layer"));
  CHECK(contains(message, "adapter of 'blocks.0.attn.k': \"rank\" must be an integer > 0"));
  CHECK(contains(message, "'blocks.0.attn.q.lora_C', which this model does not have"));
  // A config without its model, and a missing weights file, are errors too.
  std::ofstream(config)
      << nlohmann::json::parse(R"({"format": "sora-model", "version": 1})").dump();
  CHECK(contains(error_of([&] { io::load_model<float>(dir / "m"); }), "no \"config\""));
  io::save_model(dir / "m", s.model);
  std::filesystem::remove(dir / "m" / "model.safetensors");
  CHECK(contains(error_of([&] { io::load_model<float>(dir / "m"); }), "model.safetensors"));
  CHECK(contains(error_of([&] { io::load_model<float>(dir / "nothing"); }), "config.json"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("from_config builds the configured model; unknown keys and wrong types are errors") {
  const auto dir = temp_dir("from_config");
  model::TransformerConfig c = config(5);
  c.gelu = ops::Gelu::exact;
  c.pooling = model::Pooling::last;
  c.head = model::Head::regression;
  c.num_labels = 3;
  std::ofstream(dir / "config.json") << model::to_json(c).dump(2);
  const auto m = model::from_config<double>(dir / "config.json");
  CHECK(model::to_json(m->config()) == model::to_json(c));
  // The same model as the constructor builds from the struct: the seed is in the config.
  model::Transformer<double> direct(c);
  CHECK(m->blocks[1].attn.v.base.weight.value == direct.blocks[1].attn.v.base.weight.value);
  // A save_model folder's config.json works too.
  io::save_model(dir / "saved", direct);
  CHECK(model::to_json(model::from_config<double>(dir / "saved" / "config.json")->config()) ==
        model::to_json(c));

  std::ofstream(dir / "typo.json") << R"({"width": "32", "layer": 4, "head": "cls", "seed": -1})";
  const std::string message = error_of([&] { model::from_config<float>(dir / "typo.json"); });
  CHECK(contains(message, "\"width\" must be an integer, got \"32\""));
  CHECK(contains(message, "unknown key \"layer\""));
  CHECK(contains(message, "\"head\" must be \"lm\" | \"classification\" | \"regression\""));
  CHECK(contains(message, "\"seed\" must be an integer >= 0"));
  std::ofstream(dir / "invalid.json") << R"({"width": 30, "heads": 4})";
  CHECK(contains(error_of([&] { model::from_config<float>(dir / "invalid.json"); }),
                 "does not split into 4 heads"));
  std::filesystem::remove_all(dir);
}
