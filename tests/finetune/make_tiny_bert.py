"""A tiny random BertForSequenceClassification and a WordPiece tokenizer.json trained on the
words of sora-finetune's embedded synthetic language, saved into one folder: what
`sora-finetune --model` fine-tunes in the tests (seconds, no download).

usage: make_tiny_bert.py OUT_DIR [gpt2]
  gpt2: a tiny GPT2ForSequenceClassification and a byte-level BPE tokenizer instead
"""

import sys

import torch
from tokenizers import (Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                          GPT2ForSequenceClassification)

# The synthetic language's words (examples/finetune/synthetic.hpp): every one gets its own
# token, so that the tiny model sees whole words.
WORDS = """the a cat dog bird fox horse mouse child farmer king queen doctor teacher baker sailor
wolf bear kind brave gentle clever happy honest friendly calm bright generous cruel lazy rude
greedy angry dishonest selfish nasty grumpy cowardly red old young tall small green wooden quiet
round distant helps loves praises thanks rescues feeds hurts hates mocks robs scolds bites sees
meets follows watches finds passes not great wonderful lovely awful terrible sad fine .""".split()


def main(out):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator([" ".join(WORDS)] * 4,
                            trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.save(f"{out}/tokenizer.json")

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                        num_labels=2, pad_token_id=tok.token_to_id("[PAD]"))
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    print(f"OK: {out} (vocabulary {tok.get_vocab_size()})")


def main_gpt2(out):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [" ".join(WORDS)] * 4,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(f"{out}/tokenizer.json")
    torch.manual_seed(0)
    # GPT-2 has no padding token; the classifier pools the last token before the first
    # pad_token_id, so padding must have one (0, <|endoftext|>, which the texts never hold).
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=16, n_layer=2, n_head=2,
                        n_positions=64, pad_token_id=0, num_labels=2)
    GPT2ForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    print(f"OK: {out} (vocabulary {tok.get_vocab_size()})")


if __name__ == "__main__":
    if sys.argv[2:] == ["gpt2"]:
        main_gpt2(sys.argv[1])
    else:
        main(sys.argv[1])
