"""A tiny random BertForSequenceClassification and a WordPiece tokenizer.json trained on the
words of sora-finetune's embedded synthetic language, saved into one folder: what
`sora-finetune --model` fine-tunes in the tests (seconds, no download).

usage: make_tiny_bert.py OUT_DIR
"""

import sys

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification

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


if __name__ == "__main__":
    main(sys.argv[1])
