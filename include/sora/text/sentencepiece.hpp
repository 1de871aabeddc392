#pragma once
// SentencePiece .model files, through Debian's libsentencepiece (the builds that found it
// define SORA_TEXT_WITH_SENTENCEPIECE). The model file carries its own normalization (a
// compiled character map) and whitespace handling, so the library encodes each piece of text
// between added tokens whole; its byte spans map back to the original text.

#ifdef SORA_TEXT_WITH_SENTENCEPIECE

#include <sentencepiece_processor.h>

#include <memory>
#include <sora/text/decoders.hpp>
#include <sora/text/model.hpp>
#include <string>
#include <vector>

namespace sora::text {

class SentencePieceModel final : public Model {
 public:
  static std::unique_ptr<SentencePieceModel> load(const std::string& path) {
    auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
    const auto status = sp->Load(path);
    SORA_CHECK(status.ok(), path, ": not a SentencePiece model: ", status.ToString());
    auto m = std::unique_ptr<SentencePieceModel>(new SentencePieceModel());
    m->sp_ = std::move(sp);
    const json::Where at{path, "pieces"};
    for (int i = 0; i < m->sp_->GetPieceSize(); ++i) {
      m->vocab_.set(m->sp_->IdToPiece(i), static_cast<std::uint32_t>(i));
    }
    return m;
  }

  void tokenize(const NormalizedString& word, std::vector<Token>& out) const override {
    const auto spt = sp_->EncodeAsImmutableProto(word.text());
    for (const auto& p : spt.pieces()) {
      out.push_back({p.id(), word.original(p.begin(), p.end())});
    }
  }

  const Vocab& vocab() const override { return vocab_; }
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> processor() const { return sp_; }

 private:
  SentencePieceModel() = default;
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  Vocab vocab_;
};

// Decoding by the library itself (▁ to spaces, byte pieces to bytes).
class SentencePieceDecoder final : public Decoder {
 public:
  explicit SentencePieceDecoder(std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp)
      : sp_(std::move(sp)) {}
  void decode(std::vector<std::string>& tokens) const override {
    std::string out;
    const auto status = sp_->Decode(tokens, &out);
    SORA_CHECK(status.ok(), "SentencePiece decode: ", status.ToString());
    tokens.assign(1, std::move(out));
  }

 private:
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace sora::text

#endif  // SORA_TEXT_WITH_SENTENCEPIECE
