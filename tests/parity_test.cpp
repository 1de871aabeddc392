// Parity with PyTorch, step for step: the same transformer, from the same weights, in sora and
// in an independent PyTorch autograd implementation (tests/parity/torch_reference.py, run with
// Debian's python3-torch). Compared: logits, loss, every trainable parameter's gradient, and
// every trainable parameter after five optimizer steps (clipping, AdamW with decoupled weight
// decay and bias correction, and for SoRA the gates' AdamW step and proximal soft threshold).
//
// The weights and the batch go to Python in a safetensors file (io/), results come back the
// same way. If /usr/bin/python3 (or $SORA_PYTHON) cannot import torch the test fails and says
// so: a parity test that skips itself proves nothing.
#include <doctest/doctest.h>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sora/model.hpp>
#include <sora/optim/clip.hpp>
#include <sora/optim/param_groups.hpp>
#include <sstream>
#include <string>
#include <vector>

#if __has_include(<nlohmann/json.hpp>)
#include <sora/io/safetensors.hpp>
#define SORA_PARITY_HAS_IO 1
#else
#define SORA_PARITY_HAS_IO 0
#endif

#if SORA_PARITY_HAS_IO

using namespace sora;
using model::Method;

namespace {

namespace fs = std::filesystem;

const char* python() {
  const char* env = std::getenv("SORA_PYTHON");
  return env != nullptr && *env != '\0' ? env : "/usr/bin/python3";
}

fs::path reference_script() {
  return fs::path(__FILE__).parent_path() / "parity" / "torch_reference.py";
}

struct ParityCase {
  std::string name;
  model::TransformerConfig config;
  Method method = Method::lora;
  optim::FineTuneOptions opt;
  double max_grad_norm = 1.0;
  int steps = 5;
};

model::TransformerConfig base_config(bool causal, model::Head head) {
  model::TransformerConfig c;
  c.vocab_size = 32;
  c.width = 32;
  c.heads = 4;
  c.layers = 2;
  c.ffn_width = 64;
  c.max_len = 16;
  c.causal = causal;
  c.dropout = 0.0;  // the two sides draw different random numbers
  c.head = head;
  c.num_labels = head == model::Head::regression ? 2 : 3;
  c.seed = 21;
  return c;
}

// Three sequences of 8 tokens, the last two right-padded.
model::Batch parity_batch(const model::TransformerConfig& c) {
  model::Batch b;
  b.batch = 3;
  b.seq = 8;
  Rng rng(77);
  for (Index i = 0; i < b.batch * b.seq; ++i)
    b.tokens.push_back(static_cast<int>(rng.below(static_cast<std::uint64_t>(c.vocab_size))));
  const Index lengths[] = {8, 6, 3};
  for (Index s = 0; s < b.batch; ++s)
    for (Index t = 0; t < b.seq; ++t) b.mask.push_back(t < lengths[s] ? 1.0f : 0.0f);
  if (c.head == model::Head::lm) {
    model::set_next_token_labels(b);
  } else if (c.head == model::Head::classification) {
    b.labels = {2, 0, 1};
  } else {
    b.values = {0.5, -1.0, 1.5, 0.25, -0.75, 2.0};
  }
  return b;
}

// Away from the initial point: random B and gates (B = 0 hides A's and g's gradients) and
// LayerNorm parameters, so that every compared gradient is non-trivial.
void perturb(model::Transformer<float>& m) {
  Rng rng(4242);
  m.visit_params([&](Param<float>& p) {
    const std::string kind = model::module_kind(p);
    if (p.name.ends_with("lora_B")) rng.fill_normal(p.value, 0.0, 0.1);
    if (p.name.ends_with("lora_gate")) rng.fill_normal(p.value, 0.0, 1.0);
    if (kind == "layernorm")
      p.value.array() += MatrixF::NullaryExpr(p.value.rows(), p.value.cols(), [&] {
                           return static_cast<float>(rng.normal(0.0, 0.1));
                         }).array();
  });
}

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

// Relative error of a against the reference b: max |a - b| / max(max |b|, floor).
double rel_error(const MatrixF& a, const MatrixF& b, double floor = 1e-6) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const double diff = (a - b).cast<double>().cwiseAbs().maxCoeff();
  return diff / std::max(static_cast<double>(b.cwiseAbs().maxCoeff()), floor);
}

void run_parity(const ParityCase& pc) {
  model::Transformer<float> m(pc.config);
  model::PeftConfig peft;
  peft.method = pc.method;
  peft.rank = 4;
  peft.alpha = 8.0;
  peft.seed = 9;
  m.apply_peft(peft);
  perturb(m);
  const model::Batch batch = parity_batch(pc.config);
  const Index B = batch.batch, T = batch.seq;

  // ---- the input file -----------------------------------------------------------------------
  io::SafetensorsWriter in;
  std::string trainable;
  m.visit_params([&](Param<float>& p) {
    in.add(p);
    if (p.trainable()) trainable += (trainable.empty() ? "" : ",") + p.name;
  });
  MatrixF tokens(B, T), mask(B, T);
  for (Index i = 0; i < B * T; ++i) {
    tokens(i / T, i % T) = static_cast<float>(batch.tokens[static_cast<std::size_t>(i)]);
    mask(i / T, i % T) = batch.mask[static_cast<std::size_t>(i)];
  }
  in.add("input.tokens", tokens, io::Dtype::F32);
  in.add("input.mask", mask, io::Dtype::F32);
  if (pc.config.head == model::Head::regression) {
    MatrixF v(B, pc.config.num_labels);
    for (Index i = 0; i < v.size(); ++i)
      v(i / v.cols(), i % v.cols()) = static_cast<float>(batch.values[static_cast<std::size_t>(i)]);
    in.add("input.targets", v, io::Dtype::F32);
  } else {
    MatrixF t(1, static_cast<Index>(batch.labels.size()));
    for (Index i = 0; i < t.cols(); ++i)
      t(0, i) = static_cast<float>(batch.labels[static_cast<std::size_t>(i)]);
    in.add_vector("input.targets", t, io::Dtype::F32);
  }
  const auto& c = pc.config;
  const auto* first_adapter = &*m.blocks[0].attn.q.adapter;
  in.set_metadata("layers", std::to_string(c.layers));
  in.set_metadata("heads", std::to_string(c.heads));
  in.set_metadata("causal", c.causal ? "1" : "0");
  in.set_metadata("gelu", c.gelu == ops::Gelu::tanh ? "tanh" : "exact");
  in.set_metadata("tied", c.tied_lm_head ? "1" : "0");
  in.set_metadata("head", model::head_name(c.head));
  in.set_metadata("pooling", c.pooled_token() == model::Pooling::first ? "first" : "last");
  in.set_metadata("scale", fmt(static_cast<double>(first_adapter->scale())));
  in.set_metadata("ln_eps", fmt(c.ln_eps));
  in.set_metadata("trainable", trainable);
  in.set_metadata("lr", fmt(pc.opt.lr));
  in.set_metadata("beta1", fmt(pc.opt.beta1));
  in.set_metadata("beta2", fmt(pc.opt.beta2));
  in.set_metadata("eps", fmt(pc.opt.eps));
  in.set_metadata("weight_decay", fmt(pc.opt.weight_decay));
  in.set_metadata("xi", fmt(pc.opt.xi));
  in.set_metadata("xi_lr_scaled", pc.opt.scale_xi_by_lr ? "1" : "0");
  in.set_metadata("max_grad_norm", fmt(pc.max_grad_norm));
  in.set_metadata("steps", std::to_string(pc.steps));

  const fs::path dir =
      fs::temp_directory_path() / ("sora_parity_" + std::to_string(::getpid()) + "_" + pc.name);
  fs::create_directories(dir);
  const fs::path in_path = dir / "in.safetensors", out_path = dir / "out.safetensors",
                 log_path = dir / "python.log";
  in.write(in_path);

  // ---- PyTorch ------------------------------------------------------------------------------
  const std::string command = std::string("'") + python() + "' '" + reference_script().string() +
                              "' '" + in_path.string() + "' '" + out_path.string() + "' > '" +
                              log_path.string() + "' 2>&1";
  const int status = std::system(command.c_str());
  std::string log;
  {
    std::ifstream f(log_path);
    log.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 3) {
    FAIL("PyTorch is not available to ", std::string(python()),
         ": install Debian's python3-torch (scripts/test does), or point SORA_PYTHON at a "
         "Python with torch. Output: ",
         log);
  }
  INFO("command: ", command);
  INFO("python output: ", log);
  REQUIRE(code == 0);
  const auto ref = io::SafetensorsFile::open(out_path);

  // ---- first forward / backward -------------------------------------------------------------
  m.zero_grad();
  const float loss = m.forward(batch);
  m.backward();
  // float32 throughout on both sides, with different summation orders (Eigen's GEMM blocking
  // vs PyTorch's BLAS, softmax and LayerNorm reductions). Measured worst relative errors (on
  // this machine, all four cases): logits 1e-6, gradients 4e-6 (a gradient is a longer chain of
  // rounded products). Bounds: 1e-5 for logits and loss, 5e-5 for gradients (errors relative to
  // the tensor's largest entry): ~10x the measurement, and still 1e3 or more below what a
  // wrong formula, a missed scale or a transposed weight produces.
  const double logits_error = rel_error(m.logits(), ref.matrix<float>("logits"));
  CHECK(logits_error < 1e-5);
  CHECK(std::abs(loss - ref.matrix<float>("loss")(0, 0)) < 1e-5 * std::max(1.0f, std::abs(loss)));
  Index compared = 0;
  double grad_error = 0;
  m.visit_params([&](Param<float>& p) {
    if (!p.trainable()) return;
    CAPTURE(p.name);
    const double e = rel_error(p.gradient(), ref.matrix<float>("grad." + p.name));
    CHECK(e < 5e-5);
    grad_error = std::max(grad_error, e);
    ++compared;
  });
  CHECK(compared > 0);

  // ---- five optimizer steps -----------------------------------------------------------------
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, pc.opt);
  const auto params = m.trainable_parameters();
  const MatrixF ref_losses = ref.matrix<float>("losses");
  double max_norm = 0;
  for (int step = 0; step < pc.steps; ++step) {
    m.zero_grad();
    const float step_loss = m.forward(batch);
    m.backward();
    max_norm = std::max(max_norm, optim::clip_grad_norm(params, pc.max_grad_norm));
    opt.step();
    CAPTURE(step);
    CHECK(std::abs(step_loss - ref_losses(0, step)) < 2e-5 * std::max(1.0f, std::abs(step_loss)));
  }
  MESSAGE(pc.name, ": ", compared, " gradients compared; largest gradient norm before clipping ",
          max_norm, " (clipped at ", pc.max_grad_norm, ")");
  // After five steps of lr 1e-2 each entry has moved by up to ~5e-2. Adam divides by sqrt(v),
  // so an entry whose gradient is tiny turns rounding noise into part of a step: measured
  // worst 8e-6 of the tensor's scale (scale = max(0.1, max |p|)). Bound 1e-4 of the scale:
  // ~10x the measurement, 1e3 below one step of a correct update.
  Index zero_gates = 0, ref_zero_gates = 0;
  double param_error = 0;
  m.visit_params([&](Param<float>& p) {
    if (!p.trainable()) return;
    CAPTURE(p.name);
    const MatrixF r = ref.matrix<float>("final." + p.name);
    const double diff = (p.value - r).cast<double>().cwiseAbs().maxCoeff();
    const double scale = std::max(0.1, static_cast<double>(r.cwiseAbs().maxCoeff()));
    CHECK(diff <= 1e-4 * scale);
    param_error = std::max(param_error, diff / scale);
    if (optim::is_sora_gate(p)) {
      zero_gates += (p.value.array() == 0.0f).count();
      ref_zero_gates += (r.array() == 0.0f).count();
    }
  });
  MESSAGE(pc.name, ": worst relative errors: logits ", logits_error, ", gradients ", grad_error,
          ", parameters after ", pc.steps, " steps ", param_error);
  // The proximal step must zero exactly the same gates on both sides.
  CHECK(zero_gates == ref_zero_gates);
  if (pc.method == Method::sora && pc.opt.xi > 0.0) {
    MESSAGE(pc.name, ": gates zeroed by the proximal step: ", zero_gates);
    CHECK(zero_gates > 0);
  }
  fs::remove_all(dir);
}

optim::FineTuneOptions parity_options(double xi, bool lr_scaled) {
  optim::FineTuneOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.1;
  o.xi = xi;
  o.scale_xi_by_lr = lr_scaled;
  return o;
}

}  // namespace

TEST_CASE("PyTorch parity: LoRA, causal LM head, tied embedding, padding") {
  ParityCase pc;
  pc.name = "lora_lm";
  pc.config = base_config(true, model::Head::lm);
  pc.method = Method::lora;
  pc.opt = parity_options(0.0, false);
  run_parity(pc);
}

TEST_CASE("PyTorch parity: SoRA, bidirectional classification, exact GELU, gate prox") {
  ParityCase pc;
  pc.name = "sora_cls";
  pc.config = base_config(false, model::Head::classification);
  pc.config.gelu = ops::Gelu::exact;
  pc.method = Method::sora;
  // ξ = 0.1 per step: gates drawn N(0, 1) within 0.5 of zero die within the five steps.
  pc.opt = parity_options(0.1, false);
  run_parity(pc);
}

TEST_CASE("PyTorch parity: SoRA, causal regression on the last token, lr-scaled threshold") {
  ParityCase pc;
  pc.name = "sora_reg";
  pc.config = base_config(true, model::Head::regression);
  pc.method = Method::sora;
  pc.opt = parity_options(20.0, true);  // threshold ξ lr = 0.2 per step
  pc.max_grad_norm = 0.5;
  run_parity(pc);
}

TEST_CASE("PyTorch parity: LoRA with an untied LM head") {
  ParityCase pc;
  pc.name = "lora_untied";
  pc.config = base_config(true, model::Head::lm);
  pc.config.tied_lm_head = false;
  pc.method = Method::lora;
  pc.opt = parity_options(0.0, false);
  pc.max_grad_norm = 0.0;  // no clipping
  run_parity(pc);
}

#else

TEST_CASE("PyTorch parity needs nlohmann/json for io/safetensors") {
  FAIL(
      "nlohmann/json is not installed (Debian: nlohmann-json3-dev; scripts/test installs it): "
      "the parity test exchanges weights through safetensors files");
}

#endif
