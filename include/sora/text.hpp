#pragma once
// sora::text: tokenizers (tokenizer.json, vocab.txt) with the results of Hugging Face's
// `tokenizers` library. Needs the sora::text CMake target (ICU, PCRE2, nlohmann/json).
#include <sora/text/tokenizer.hpp>
