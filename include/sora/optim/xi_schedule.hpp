#pragma once
// The sequence of sparsity thresholds ξ_0 .. ξ_{K-1} that the sparsity scheduler (the
// paper's Algorithm 1) walks through, one training stage per value, from ξ0 to ξ_max.
// With u_k = k / (K - 1):
//   linear:      ξ_k = ξ0 + (ξmax - ξ0) u_k                      (even steps)
//   log_linear:  ξ_k = ξ0 (ξmax / ξ0)^u_k                         (even steps of log ξ; ξ0 > 0)
//   exp_linear:  ξ_k = ξ0 + (ξmax - ξ0) (b^u_k - 1) / (b - 1)      (steps growing by a factor
//                b^(1/(K-1)): fine near the dense end, coarse near the sparse end; b > 1)
// All three start exactly at ξ0, end exactly at ξmax and increase strictly when ξmax > ξ0.

#include <cmath>
#include <string>
#include <vector>

#include "sora/core/error.hpp"

namespace sora::optim {

enum class XiScheduleKind { linear, log_linear, exp_linear };

inline XiScheduleKind parse_xi_schedule(const std::string& name) {
  if (name == "linear") return XiScheduleKind::linear;
  if (name == "log_linear" || name == "log-linear") return XiScheduleKind::log_linear;
  if (name == "exp_linear" || name == "exp-linear") return XiScheduleKind::exp_linear;
  ::sora::detail::throw_error("unknown xi schedule '", name,
                              "' (expected linear, log-linear or exp-linear)");
}

inline std::vector<double> xi_schedule(XiScheduleKind kind, double xi0, double xi_max, int K,
                                       double exp_base = 10.0) {
  SORA_CHECK(K >= 1, "xi schedule needs at least one point, got K = ", K);
  SORA_CHECK(std::isfinite(xi0) && std::isfinite(xi_max) && xi0 >= 0.0 && xi_max >= xi0,
             "xi schedule needs finite 0 <= xi0 <= xi_max, got xi0 = ", xi0, ", xi_max = ", xi_max);
  SORA_CHECK(kind != XiScheduleKind::log_linear || xi0 > 0.0,
             "a log-linear xi schedule needs xi0 > 0 (log 0 is undefined)");
  SORA_CHECK(kind != XiScheduleKind::exp_linear || exp_base > 1.0,
             "an exp-linear xi schedule needs a base > 1, got ", exp_base);
  std::vector<double> xi(static_cast<std::size_t>(K));
  for (int k = 0; k < K; ++k) {
    const double u = K == 1 ? 1.0 : static_cast<double>(k) / static_cast<double>(K - 1);
    double value = 0.0;
    switch (kind) {
      case XiScheduleKind::linear:
        value = xi0 + (xi_max - xi0) * u;
        break;
      case XiScheduleKind::log_linear:
        value = xi0 * std::pow(xi_max / xi0, u);
        break;
      case XiScheduleKind::exp_linear:
        value = xi0 + (xi_max - xi0) * (std::pow(exp_base, u) - 1.0) / (exp_base - 1.0);
        break;
    }
    xi[static_cast<std::size_t>(k)] = value;
  }
  // Pin the end points: pow/exp rounding must not overshoot the user's ξ_max.
  xi.front() = K == 1 ? xi_max : xi0;
  xi.back() = xi_max;
  return xi;
}

}  // namespace sora::optim
