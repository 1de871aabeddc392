// The smallest real use of the library: soft-threshold a gate vector and prune what died.
#include <iostream>
#include <sora/sora.hpp>

int main() {
  sora::RowVector<float> gates(5);
  gates << 0.5f, -0.02f, 0.01f, -0.3f, 0.0f;
  sora::prox::soft_threshold_inplace(gates, 0.05f);
  int alive = 0;
  for (float g : gates) alive += g != 0.0f;
  std::cout << "gates after the proximal step: " << gates << " (" << alive << " alive)\n";
  // 0.5 -> 0.45 and -0.3 -> -0.25 survive; the small ones are zeroed.
  return (alive == 2 && gates(0) > 0.449f && gates(0) < 0.451f) ? 0 : 1;
}
