#pragma once
// Unigram (SentencePiece): each piece has a log-probability; a word is cut into the pieces of
// highest total score (Viterbi over character positions). A character no piece starts with is
// unknown, scored min_score - 10; neighbouring unknown characters fuse into one unknown token,
// which byte_fallback turns into <0xAB> tokens (each covering the whole unknown run).

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <sora/text/model.hpp>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace sora::text {

namespace detail {

// The score the tokenizers crate sees for a number of tokenizer.json. Its JSON reader (serde_json
// without float_roundtrip) turns "-1.8376462585346722" into the integer 18376462585346722,
// rounds that to a double, then divides by 1e16: a second rounding, sometimes one ulp away
// from the correctly rounded value nlohmann/json returns. Viterbi ties between paths a ulp
// apart then break differently, so the scores are re-read the crate's way from their
// shortest decimal form (which is how the crate writes them).
inline double crate_double(double v) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);
  if (res.ec != std::errc()) return v;
  const std::string_view s(buf, static_cast<std::size_t>(res.ptr - buf));
  std::size_t i = 0;
  const bool negative = i < s.size() && s[i] == '-';
  if (negative) ++i;
  std::uint64_t significand = 0;
  int exponent = 0;
  bool fraction = false;
  for (; i < s.size() && s[i] != 'e'; ++i) {
    if (s[i] == '.') {
      fraction = true;
      continue;
    }
    if (s[i] < '0' || s[i] > '9') return v;  // inf, nan
    if (significand > (std::numeric_limits<std::uint64_t>::max() - 9) / 10) return v;
    significand = significand * 10 + static_cast<std::uint64_t>(s[i] - '0');
    if (fraction) --exponent;
  }
  if (i < s.size()) exponent += std::atoi(std::string(s.substr(i + 1)).c_str());
  double f = static_cast<double>(significand);
  const int e = exponent < 0 ? -exponent : exponent;
  if (e > 308) return v;
  const double pow10 = std::stod("1e" + std::to_string(e));
  f = exponent >= 0 ? f * pow10 : f / pow10;
  return negative ? -f : f;
}

}  // namespace detail

class Unigram final : public Model {
 public:
  Unigram(std::vector<std::pair<std::string, double>> pieces, std::optional<std::uint32_t> unk_id,
          bool byte_fallback, const json::Where& at)
      : unk_id_(unk_id), byte_fallback_(byte_fallback) {
    if (pieces.empty()) json::fail(at / "vocab", "empty vocabulary");
    scores_.reserve(pieces.size());
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      vocab_.set(pieces[i].first, static_cast<std::uint32_t>(i));
      scores_.push_back(pieces[i].second);
      min_score_ = std::min(min_score_, pieces[i].second);
      max_len_ = std::max(max_len_, pieces[i].first.size());
    }
    if (unk_id_ && *unk_id_ >= pieces.size()) {
      json::fail(at / "unk_id", "id ", *unk_id_, " is past the ", pieces.size(), " pieces");
    }
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      byte_ids_[b] = vocab_.find(name);
    }
  }

  static std::unique_ptr<Unigram> from_json(const json::Json& j, const json::Where& at) {
    const json::Where vw = at / "vocab";
    const json::Json& list = json::array(json::field(j, "vocab", at), vw);
    std::vector<std::pair<std::string, double>> pieces;
    pieces.reserve(list.size());
    for (std::size_t i = 0; i < list.size(); ++i) {
      json::array(list[i], vw[i]);
      if (list[i].size() != 2) json::fail(vw[i], "expected [piece, score]");
      pieces.emplace_back(json::as_string(list[i][0], vw[i][0]),
                          detail::crate_double(json::as_double(list[i][1], vw[i][1])));
    }
    std::optional<std::uint32_t> unk;
    if (const json::Json* u = json::optional_field(j, "unk_id", at)) {
      unk = static_cast<std::uint32_t>(json::as_uint(*u, at / "unk_id"));
    }
    return std::make_unique<Unigram>(std::move(pieces), unk,
                                     json::get_bool(j, "byte_fallback", at, false), at);
  }

  void tokenize(const NormalizedString& word, std::vector<Token>& out) const override {
    const std::string& w = word.text();
    const std::size_t n = w.size();
    if (n == 0) return;
    struct Node {
      double score = 0;
      std::size_t start = npos;
      std::uint32_t id = 0;
    };
    std::vector<Node> best(n + 1);
    best[0].start = 0;
    const double unk_score = min_score_ - 10.0;
    for (std::size_t s = 0; s < n;) {
      const std::size_t clen = utf8_length(static_cast<unsigned char>(w[s]));
      const double here = best[s].score;
      bool single = false;
      // Shorter pieces first; a later piece replaces an earlier one only with a higher score.
      for (std::size_t e = s + clen; e <= n && e - s <= max_len_;) {
        if (const auto id = vocab_.find(std::string_view(w).substr(s, e - s))) {
          const double cand = here + scores_[*id];
          Node& t = best[e];
          if (t.start == npos || cand > t.score) t = {cand, s, *id};
          if (e - s == clen) single = true;
        }
        if (e == n) break;
        e += utf8_length(static_cast<unsigned char>(w[e]));
      }
      if (!single) {
        if (!unk_id_) {
          ::sora::detail::throw_error("Unigram: '", w.substr(s, clen),
                                      "' has no piece and the model has no unk_id");
        }
        Node& t = best[s + clen];
        const double cand = here + unk_score;
        if (t.start == npos || cand > t.score) t = {cand, s, *unk_id_};
      }
      s += clen;
    }
    // Back from the end; runs of unknown pieces fuse into one.
    std::vector<std::pair<std::size_t, std::size_t>> pieces;  // [start, end) in the word
    std::size_t unk_start = npos, unk_end = 0;
    for (std::size_t e = n; e > 0;) {
      const Node& node = best[e];
      if (unk_id_ && node.id == *unk_id_) {
        if (unk_start == npos) unk_end = e;
        unk_start = node.start;
      } else {
        if (unk_start != npos) pieces.emplace_back(unk_start, unk_end);
        unk_start = npos;
        pieces.emplace_back(node.start, e);
      }
      e = node.start;
    }
    if (unk_start != npos) pieces.emplace_back(unk_start, unk_end);
    for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
      const auto [b, e] = *it;
      const Range r = word.original(b, e);
      const std::string_view piece = std::string_view(w).substr(b, e - b);
      if (const auto id = vocab_.find(piece)) {
        out.push_back({*id, r});
        continue;
      }
      if (byte_fallback_) {
        bool all = true;
        for (const char c : piece) all = all && byte_ids_[static_cast<unsigned char>(c)];
        if (all) {
          for (const char c : piece) out.push_back({*byte_ids_[static_cast<unsigned char>(c)], r});
          continue;
        }
      }
      out.push_back({*unk_id_, r});
    }
  }

  const Vocab& vocab() const override { return vocab_; }

 private:
  static constexpr std::size_t npos = std::size_t(-1);
  Vocab vocab_;
  std::vector<double> scores_;
  double min_score_ = std::numeric_limits<double>::infinity();
  std::size_t max_len_ = 0;
  std::optional<std::uint32_t> unk_id_;
  bool byte_fallback_;
  std::optional<std::uint32_t> byte_ids_[256];
};

}  // namespace sora::text
