#pragma once
// Learning-rate schedules as pure functions of the step: the multiplier applied to the base
// learning rate at optimizer step `step` (0-based: the first step uses step = 0).
//   constant:        1
//   warmup_linear:   (step + 1) / warmup during warmup, then linear decay to 0 at `total`
//   warmup_cosine:   the same warmup, then half a cosine from 1 to 0 at `total`
// The warmup counts the first step as 1/warmup rather than 0 so that no step is wasted
// with a zero learning rate (the multiplier reaches 1 on the last warmup step).
//
// A schedule is a multiplier: train::fit calls optimizer.set_lr_multiplier(multiplier(step)),
// which scales the optimizer's own base rates (FineTuneOptimizer has two: lr and gate_lr). So
// build it without a rate, LrSchedule(kind, warmup, total). The forms that take a base_lr only
// record it (lr(step) = base_lr * multiplier(step), kept in checkpoints); fit never reads it.

#include <cmath>
#include <numbers>
#include <string>

#include "sora/core/error.hpp"

namespace sora::optim {

enum class LrScheduleKind { constant, warmup_linear, warmup_cosine };

inline LrScheduleKind parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrScheduleKind::constant;
  if (name == "linear" || name == "warmup_linear") return LrScheduleKind::warmup_linear;
  if (name == "cosine" || name == "warmup_cosine") return LrScheduleKind::warmup_cosine;
  ::sora::detail::throw_error("unknown learning-rate schedule '", name,
                              "' (expected constant, linear or cosine)");
}

class LrSchedule {
 public:
  LrSchedule() = default;
  // total: the number of optimizer steps of the run (or of one stage of the sparsity
  // scheduler, which gives each stage a schedule of its own). lr(step) is the multiplier.
  LrSchedule(LrScheduleKind kind, long warmup, long total) : LrSchedule(kind, 1.0, warmup, total) {}
  // The same, recording a base rate for lr(step) (see above: fit does not read it).
  LrSchedule(LrScheduleKind kind, double base_lr, long warmup, long total)
      : kind_(kind), base_lr_(base_lr), warmup_(warmup), total_(total) {
    SORA_CHECK(base_lr >= 0.0 && std::isfinite(base_lr),
               "learning rate must be finite and >= 0, got ", base_lr);
    SORA_CHECK(warmup >= 0, "warmup steps must be >= 0, got ", warmup);
    SORA_CHECK(total > 0 || kind == LrScheduleKind::constant,
               "a decaying schedule needs total steps > 0, got ", total);
    SORA_CHECK(warmup <= total || kind == LrScheduleKind::constant, "warmup (", warmup,
               ") longer than the run (", total, " steps)");
  }

  // Warmup as a fraction of the run (e.g. 0.06 as in the paper's runs).
  static LrSchedule with_warmup_ratio(LrScheduleKind kind, double ratio, long total) {
    return with_warmup_ratio(kind, 1.0, ratio, total);
  }
  static LrSchedule with_warmup_ratio(LrScheduleKind kind, double base_lr, double ratio,
                                      long total) {
    SORA_CHECK(ratio >= 0.0 && ratio <= 1.0, "warmup ratio must be in [0, 1], got ", ratio);
    return LrSchedule(kind, base_lr, static_cast<long>(std::ceil(ratio * total)), total);
  }

  double multiplier(long step) const {
    if (kind_ == LrScheduleKind::constant) return 1.0;
    if (step < warmup_) return static_cast<double>(step + 1) / static_cast<double>(warmup_);
    if (step >= total_) return 0.0;
    const double progress =
        static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_);
    if (kind_ == LrScheduleKind::warmup_linear) return 1.0 - progress;
    return 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  }

  double lr(long step) const { return base_lr_ * multiplier(step); }
  double base_lr() const { return base_lr_; }
  long warmup() const { return warmup_; }
  long total() const { return total_; }
  LrScheduleKind kind() const { return kind_; }

 private:
  LrScheduleKind kind_ = LrScheduleKind::constant;
  double base_lr_ = 1.0;
  long warmup_ = 0;
  long total_ = 0;
};

}  // namespace sora::optim
