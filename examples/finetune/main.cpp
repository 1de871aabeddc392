// sora-finetune: the example fine-tuner (see finetune.hpp for what it does and writes).
#include <exception>
#include <iostream>

#include "finetune.hpp"

int main(int argc, char** argv) {
  sora_finetune::Options options;
  if (const auto code = sora_finetune::parse_options(argc, argv, options, std::cout, std::cerr))
    return *code;
  sora_finetune::install_signal_handlers();
  try {
    return sora_finetune::run(options, std::cout);
  } catch (const std::exception& e) {
    std::cerr << "sora-finetune: " << e.what() << "\n";
    return sora_finetune::error_exit_code();
  }
}
