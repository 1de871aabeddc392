#pragma once
// The embedded default of sora-finetune: a small synthetic language, generated in process
// from a seed, whose sentences carry a hidden sentiment that three downstream tasks ask about.
//
//   sentence   = DET ADJS NOUN VERB DET ADJS NOUN          "the not kind dog hurts a calm fox"
//   ADJS       = nothing, or [not] ADJ
//   sentiment  = sum over adjectives of polarity(ADJ) x (-1 if "not") + polarity(VERB)
// Polarities are +1, -1 or 0 per word, fixed by the lexicon; the model sees only token ids, so
// it must learn which words are which, and how "not" acts on the word after it.
//
// The pretraining corpus is made of such sentences, each after <s> as in the task inputs, most
// of them followed directly by a verdict word ("great" / "awful" / "fine", and synonyms) that
// follows the sign of the sentiment: "<s> the not kind dog hurts a calm fox awful .". The
// verdict is the only hard word to predict, it needs exactly what the downstream tasks need,
// the sentiment of the sentence, and it is predicted at the position the tasks pool (the
// sentence's last word). So the pretrained model computes the sentiment where fine-tuning
// reads; `verdict accuracy` (finetune.hpp) measures how well.
//
// Downstream tasks (sentences without verdicts; labels from the hidden sentiment):
//   polarity   single sentence, classification: sentiment > 0 (zero-sentiment sentences are
//              not drawn); accuracy
//   pair       sentence pair, classification: do both sentences have the same sign; accuracy
//   score      single sentence, regression on the sentiment (clipped to [-4, 4], divided by 4);
//              Pearson correlation
//
// Token ids: 0 padding, 1 beginning of sequence, 2 separator, then the words.

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/rng.hpp"

namespace sora_finetune {

enum class WordClass { special, det, noun, adj, verb, not_, verdict, punct };

struct Word {
  std::string text;
  WordClass kind = WordClass::special;
  int polarity = 0;  // adjectives, verbs and verdicts: +1, -1 or 0
};

class Lexicon {
 public:
  static constexpr int kPad = 0;
  static constexpr int kBos = 1;
  static constexpr int kSep = 2;
  // Share of adjectives preceded by "not" (which flips their polarity).
  static constexpr double kNotShare = 0.1;
  // Share of corpus sentences followed by a verdict.
  static constexpr double kVerdictShare = 0.9;

  Lexicon() {
    add("<pad>", WordClass::special, 0);
    add("<s>", WordClass::special, 0);
    add("<sep>", WordClass::special, 0);
    for (const char* w : {"the", "a"}) det_.push_back(add(w, WordClass::det, 0));
    for (const char* w : {"cat", "dog", "bird", "fox", "horse", "mouse", "child", "farmer", "king",
                          "queen", "doctor", "teacher", "baker", "sailor", "wolf", "bear"})
      noun_.push_back(add(w, WordClass::noun, 0));
    for (const char* w : {"kind", "brave", "gentle", "clever", "happy", "honest", "friendly",
                          "calm", "bright", "generous"})
      adj_.push_back(add(w, WordClass::adj, +1));
    for (const char* w : {"cruel", "lazy", "rude", "greedy", "angry", "dishonest", "selfish",
                          "nasty", "grumpy", "cowardly"})
      adj_.push_back(add(w, WordClass::adj, -1));
    for (const char* w :
         {"red", "old", "young", "tall", "small", "green", "wooden", "quiet", "round", "distant"})
      adj_.push_back(add(w, WordClass::adj, 0));
    for (const char* w : {"helps", "loves", "praises", "thanks", "rescues", "feeds"})
      verb_.push_back(add(w, WordClass::verb, +1));
    for (const char* w : {"hurts", "hates", "mocks", "robs", "scolds", "bites"})
      verb_.push_back(add(w, WordClass::verb, -1));
    for (const char* w : {"sees", "meets", "follows", "watches", "finds", "passes"})
      verb_.push_back(add(w, WordClass::verb, 0));
    not_ = add("not", WordClass::not_, 0);
    for (const char* w : {"great", "wonderful", "lovely"})
      verdict_pos_.push_back(add(w, WordClass::verdict, +1));
    for (const char* w : {"awful", "terrible", "sad"})
      verdict_neg_.push_back(add(w, WordClass::verdict, -1));
    verdict_zero_ = add("fine", WordClass::verdict, 0);
    period_ = add(".", WordClass::punct, 0);
  }

  int size() const { return static_cast<int>(words_.size()); }
  const Word& word(int id) const { return words_[static_cast<std::size_t>(id)]; }

  std::string text(const std::vector<int>& ids) const {
    std::string out;
    for (int id : ids) {
      if (id == kPad) continue;
      if (!out.empty()) out += ' ';
      out += word(id).text;
    }
    return out;
  }

  // One sentence (no verdict, no period) and its sentiment.
  struct Sentence {
    std::vector<int> tokens;
    int sentiment = 0;
  };

  Sentence sentence(sora::Rng& rng) const {
    Sentence s;
    auto pick = [&](const std::vector<int>& from) {
      return from[static_cast<std::size_t>(rng.below(from.size()))];
    };
    auto noun_phrase = [&] {
      s.tokens.push_back(pick(det_));
      const int adjectives = rng.uniform() < 0.75 ? 1 : 0;
      for (int i = 0; i < adjectives; ++i) {
        int factor = 1;
        if (rng.uniform() < kNotShare) {
          s.tokens.push_back(not_);
          factor = -factor;
        }
        const int adj = pick(adj_);
        s.tokens.push_back(adj);
        s.sentiment += factor * word(adj).polarity;
      }
      s.tokens.push_back(pick(noun_));
    };
    noun_phrase();
    const int verb = pick(verb_);
    s.tokens.push_back(verb);
    s.sentiment += word(verb).polarity;
    noun_phrase();
    return s;
  }

  // A sentence whose sentiment is not zero (the classification tasks need a sign).
  Sentence signed_sentence(sora::Rng& rng) const {
    for (;;) {
      Sentence s = sentence(rng);
      if (s.sentiment != 0) return s;
    }
  }

  // Whether a word is a verdict (great, awful, fine, ...).
  bool is_verdict(int id) const { return word(id).kind == WordClass::verdict; }

  // Corpus text: <s> sentence [VERDICT] .
  // The verdict comes right after the sentence's last word, the position whose state the
  // downstream tasks pool, and each sentence starts with <s> as the task inputs do: the state
  // that pretraining teaches to predict the verdict is the state that fine-tuning reads.
  void append_corpus_sentence(sora::Rng& rng, std::vector<int>& out) const {
    const Sentence s = sentence(rng);
    out.push_back(kBos);
    out.insert(out.end(), s.tokens.begin(), s.tokens.end());
    if (rng.uniform() < kVerdictShare) {
      const std::vector<int>& verdicts = s.sentiment > 0 ? verdict_pos_ : verdict_neg_;
      out.push_back(s.sentiment == 0
                        ? verdict_zero_
                        : verdicts[static_cast<std::size_t>(rng.below(verdicts.size()))]);
    }
    out.push_back(period_);
  }

 private:
  int add(const char* text, WordClass kind, int polarity) {
    words_.push_back(Word{text, kind, polarity});
    return static_cast<int>(words_.size()) - 1;
  }

  std::vector<Word> words_;
  std::vector<int> det_, noun_, adj_, verb_, verdict_pos_, verdict_neg_;
  int not_ = 0, verdict_zero_ = 0, period_ = 0;
};

// A stream of corpus tokens: `count` tokens of back-to-back sentences.
inline std::vector<int> synthetic_corpus(const Lexicon& lex, std::uint64_t seed,
                                         std::size_t count) {
  sora::Rng rng(seed, 11);
  std::vector<int> out;
  out.reserve(count + 32);
  while (out.size() < count) lex.append_corpus_sentence(rng, out);
  out.resize(count);
  return out;
}

}  // namespace sora_finetune
