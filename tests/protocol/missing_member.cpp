// Compiled by CTest and expected NOT to compile: an entry point given a model that lacks a
// member of the protocol (sora/core/concepts.hpp) must stop at a static_assert naming the
// entry point and the member, not at a page of template errors; a layer given a column-major
// matrix must say so. One case per -DSORA_CASE=<n>.
#include <sora/model/config.hpp>
#include <sora/nn/adapter.hpp>
#include <sora/optim/param_groups.hpp>
#include <sora/train/trainer.hpp>
#if SORA_CASE == 2
#include <sora/io/checkpoint.hpp>
#endif

// Everything train::fit needs but backward().
struct NoBackward {
  using Scalar = float;
  using Batch = sora::model::Batch;
  sora::nn::SoraLinear<float> layer{2, 2};
  template <class Fn>
  void visit_params(Fn&& fn) {
    layer.visit_params("layer", fn);
  }
  float forward(const Batch&) { return 0.0f; }
  void train(bool) {}
};

// Everything a checkpoint needs but dropout_rng().
struct NoDropoutRng : NoBackward {
  using Linear = sora::nn::AdaptedLinear<float>;
  void backward() {}
  template <class Fn>
  void visit_linears(Fn&& fn) {
    fn(std::string("layer"), layer);
  }
};

int main() {
#if SORA_CASE == 1
  NoBackward m;
  auto opt = sora::optim::FineTuneOptimizer<float>::for_model(m, {});
  sora::model::Batch b;
  sora::train::fit<NoBackward>(m, opt, [&](long) -> const sora::model::Batch& { return b; }, {},
                               {});
#elif SORA_CASE == 2
  NoDropoutRng m;
  auto opt = sora::optim::FineTuneOptimizer<float>::for_model(m, {});
  sora::io::save_checkpoint("unused.safetensors", m, opt, {});
#elif SORA_CASE == 3
  sora::nn::Linear<float> layer(3, 2);
  const Eigen::MatrixXf x = Eigen::MatrixXf::Ones(4, 3);  // column-major, Eigen's default
  layer.forward(x);
#endif
}
