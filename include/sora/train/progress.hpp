#pragma once
// A progress bar for long work. On a terminal it redraws one line in place:
//   pretrain  [#########.........]  412/1000  41%  loss 1.9831  2.3 it/s  ETA 04:16
// When the output is not a terminal (a log file, CI) it prints a plain line every
// `log_every` steps and at the end instead, so logs stay readable.

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

namespace sora::train {

inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const long s = static_cast<long>(seconds + 0.5);
  char buffer[32];
  if (s >= 3600) {
    std::snprintf(buffer, sizeof buffer, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buffer, sizeof buffer, "%02ld:%02ld", s / 60, s % 60);
  }
  return buffer;
}

class ProgressBar {
 public:
  struct Options {
    long log_every = 0;          // plain mode: a line every this many steps (0: ~10 lines)
    bool force_plain = false;    // never draw the bar, even on a terminal
    std::FILE* stream = stderr;  // where to draw
  };

  ProgressBar(std::string label, long total) : ProgressBar(std::move(label), total, Options{}) {}
  ProgressBar(std::string label, long total, Options options)
      : label_(std::move(label)),
        total_(total),
        options_(options),
        start_(std::chrono::steady_clock::now()) {
    interactive_ = !options_.force_plain && ::isatty(::fileno(options_.stream)) != 0;
    if (options_.log_every <= 0) options_.log_every = total_ >= 10 ? total_ / 10 : 1;
  }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar() { finish(); }

  // Marks `done` steps complete; `status` is a short live text such as "loss 1.98".
  void update(long done, const std::string& status = {}) {
    done_ = done;
    status_ = status;
    const double now = elapsed();
    if (interactive_) {
      // Redraw at most ~10 times a second: drawing is slower than a tiny training step.
      if (now - last_draw_ < 0.1 && done_ < total_) return;
      last_draw_ = now;
      draw('\r');
    } else if (done_ % options_.log_every == 0 || done_ == total_) {
      draw('\n');
    }
  }

  void finish() {
    if (finished_) return;
    finished_ = true;
    if (interactive_) {
      draw('\r');
      std::fputc('\n', options_.stream);
    } else if (done_ % options_.log_every != 0 && done_ != total_) {
      draw('\n');
    }
    std::fflush(options_.stream);
  }

  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

  // The line as it would be drawn, for tests and logs.
  std::string line() const {
    const double seconds = elapsed();
    const double rate = seconds > 0 ? static_cast<double>(done_) / seconds : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : -1.0;
    const double share = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1;
    std::string text = label_ + "  ";
    if (interactive_) {
      constexpr int width = 24;
      const int filled = static_cast<int>(share * width + 1e-9);
      text += '[' + std::string(filled, '#') + std::string(width - filled, '.') + "]  ";
    }
    char numbers[160];
    std::snprintf(numbers, sizeof numbers, "%ld/%ld  %3.0f%%", done_, total_, 100.0 * share);
    text += numbers;
    if (!status_.empty()) text += "  " + status_;
    char timing[96];
    if (done_ >= total_) {
      std::snprintf(timing, sizeof timing, "  %.1f it/s  took %s", rate,
                    format_duration(seconds).c_str());
    } else {
      std::snprintf(timing, sizeof timing, "  %.1f it/s  ETA %s", rate,
                    format_duration(eta).c_str());
    }
    return text + timing;
  }

  bool interactive() const { return interactive_; }

 private:
  void draw(char end) {
    std::string text = line();
    if (interactive_) text += "\033[K";  // clear what a longer previous line left behind
    std::fprintf(options_.stream, "%s%c", text.c_str(), end);
    std::fflush(options_.stream);
  }

  std::string label_;
  long total_;
  Options options_;
  std::chrono::steady_clock::time_point start_;
  bool interactive_ = false;
  bool finished_ = false;
  long done_ = 0;
  double last_draw_ = -1.0;
  std::string status_;
};

}  // namespace sora::train
