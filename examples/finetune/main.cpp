// sora-finetune: the example fine-tuner (see finetune.hpp for what it does and writes).
#include <exception>
#include <iostream>

#include "finetune.hpp"

int main(int argc, char** argv) {
  // Idle OpenMP workers sleep instead of spinning against other processes (core/threading.hpp).
  sora::use_passive_wait(argv);
  sora_finetune::Options options;
  if (const auto code = sora_finetune::parse_options(argc, argv, options, std::cout, std::cerr))
    return *code;
  sora_finetune::install_signal_handlers();
  try {
    sora_finetune::join_world(options, &argc, &argv);  // under mpirun (distributed.hpp)
    const int status = sora_finetune::run(
        options, sora_finetune::is_root_rank() ? std::cout : sora_finetune::null_stream());
    sora_finetune::leave_world();
    return status;
  } catch (const std::exception& e) {
    sora_finetune::abort_world_if_parallel(e.what());  // ends every rank, never returns
    std::cerr << "sora-finetune: " << e.what() << "\n";
    return sora_finetune::error_exit_code();
  }
}
