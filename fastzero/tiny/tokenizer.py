"""The tiny model's tokenizer: a WordLevel vocabulary trained (tokenizers.WordLevelTrainer) on the
synthetic corpus.

Pre-tokenization keeps a whole integer as ONE token ("12", not "1" "2"): the tiny model then learns
arithmetic facts between numbers instead of carrying digits, which it cannot do in a few minutes of
CPU. The tags <answer> </answer> <think> </think> are single tokens too; every other character
(space, "=", ":", operators, brackets) is a token of its own. So a compact prompt "3 7 12=22:" is
always 8 tokens, whatever the number of digits, and prompts never need padding.

Special tokens (ids fixed, first in the vocabulary):
  0 <pad>          padding; never trained on
  1 <|endoftext|>  EOS: ends every answer; generation stops on it
  2 <unk>          anything outside the vocabulary (e.g. an integer above `max_integer`)
The tags are ordinary (non-special) vocabulary entries on purpose: decode(skip_special_tokens=True)
keeps them, so the reward always sees "<answer>...</answer>".

Every trained vocabulary entry is ALSO registered as a (non-special) added token. Why: transformers 5
ignores tokenizer_class for folders whose config says qwen2 and rebuilds Qwen2Tokenizer (byte-level
BPE, Qwen's split rule: one token per digit, spaces become "Ġ"), which changes our ids. Added tokens
are matched on the raw text (leftmost-longest, so "12" beats "1") before any pre-tokenizer or model
runs, and Qwen2Tokenizer keeps them from tokenizer_config.json, so every text made of our alphabet gets
exactly the trained ids under both pipelines. (Characters outside the alphabet differ: <unk> here,
dropped by Qwen2Tokenizer; the model never sees them.) tokenizer_class stays PreTrainedTokenizerFast
for transformers 4, which honours it. Integers 0..max_integer are all in the
vocabulary even when the corpus lacks some (they are fed to the trainer once), so the model can name
any number of its range. Ids are ordered by frequency in the corpus (the trainer's rule), ties by
text, so a rebuild from the same corpus gives the same ids.

Dropped: BPE/byte fallback (no free text here), a BOS token (Qwen2 has none), normalizers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from fastzero.atomic import atomic_write_text

PAD, EOS, UNK = "<pad>", "<|endoftext|>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)
TAGS = ("<answer>", "</answer>", "<think>", "</think>")
# One pre-token per tag, per whole integer, or per single other character (newline included).
_PIECE = r"</?answer>|</?think>|\d+|[\s\S]"


def train_tokenizer(texts: Iterable[str], *, max_integer: int) -> Tokenizer:
    """Train the WordLevel tokenizer on `texts` (prompts and answers, without EOS)."""
    if max_integer < 0:
        raise ValueError(f"max_integer must be >= 0, got {max_integer}")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECE), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # tokens are pieces of the text: join without spaces
    # Tags, every integer of the range and every operator character are always in the vocabulary.
    alphabet = [" ".join(TAGS), " ".join(str(i) for i in range(max_integer + 1)), " =:+-*/()\n"]
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=0,
                                        show_progress=False)
    tokenizer.train_from_iterator(_with_alphabet(texts, alphabet), trainer=trainer)
    vocab = tokenizer.get_vocab()
    tokenizer.add_tokens([AddedToken(token, normalized=False)
                          for token in sorted(vocab, key=vocab.get) if token not in SPECIAL_TOKENS])
    return tokenizer


def _with_alphabet(texts: Iterable[str], alphabet: list[str]) -> Iterable[str]:
    yield from alphabet
    yield from texts


def save_hf_tokenizer(tokenizer: Tokenizer, out_dir: str | os.PathLike, *, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for transformers.

    tokenizer_class is PreTrainedTokenizerFast: without it, AutoTokenizer in a folder whose config
    says qwen2 builds Qwen2Tokenizer, which re-splits text with Qwen's rule and changes the ids.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.get_vocab()
    added = [
        {"id": vocab[token], "content": token, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": token in SPECIAL_TOKENS}
        for token in sorted(vocab, key=vocab.get)
    ]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "pad_token": PAD,
        "eos_token": EOS,
        "unk_token": UNK,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,  # spaces are real tokens here; never "clean" them
        "padding_side": "left",  # generation batches pad on the left
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    special_map = {"pad_token": PAD, "eos_token": EOS, "unk_token": UNK}
    tokenizer_json = tokenizer.to_str(pretty=True)
    atomic_write_text(out / "tokenizer.json", tokenizer_json)
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "special_tokens_map.json", json.dumps(special_map, indent=2) + "\n")
