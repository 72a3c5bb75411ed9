"""`python -m fastzero.tiny build --out fastzero/assets/tiny-countdown`: rebuild the embedded model.

Steps, each printed: draw the held-out eval set, build the synthetic corpus without it, train the
tokenizer on the corpus, pretrain a Qwen2 model for a fixed number of steps, measure its greedy
accuracy on the eval set, and write the HF folder (atomically) with recipe.json and BUILD.md.
Same seed and arguments give the same corpus, tokenizer and initial weights; the trained weights
match up to float reduction order (thread count), so rebuilt accuracy can differ by a point or so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import time
from dataclasses import asdict

import torch

from fastzero.tiny.corpus import ProblemRanges, build_documents
from fastzero.tiny.pretrain import ModelShape, PretrainConfig, encode_documents, make_model, pretrain, save_checkpoint
from fastzero.tiny.thinking import TraceShape, build_thinking_documents
from fastzero.tiny.tokenizer import EOS, PAD, train_tokenizer

DEFAULTS = PretrainConfig()
TRACE_DEFAULTS = TraceShape()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fastzero.tiny", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="rebuild the tiny Countdown checkpoint")
    build.add_argument("--out", required=True, help="output folder (replaced atomically)")
    build.add_argument("--format", choices=("direct", "think"), default="direct",
                       help="direct: <answer> only (tiny-countdown); think: <think> traces first (tiny-countdown-think)")
    build.add_argument("--seed", type=int, default=0, help="corpus, init and batch-order seed")
    build.add_argument("--steps", type=int, default=DEFAULTS.steps, help="pretraining steps")
    build.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    build.add_argument("--lr", type=float, default=DEFAULTS.lr)
    build.add_argument("--docs", type=int, default=200_000, help="corpus documents")
    build.add_argument("--correct-fraction", type=float, default=0.2,
                       help="share of documents with a correct answer (the rest are random expressions)")
    build.add_argument("--hidden-size", type=int, default=ModelShape.hidden_size)
    build.add_argument("--layers", type=int, default=ModelShape.num_hidden_layers)
    build.add_argument("--heads", type=int, default=ModelShape.num_attention_heads)
    build.add_argument("--intermediate-size", type=int, default=ModelShape.intermediate_size)
    build.add_argument("--max-positions", type=int, default=ModelShape.max_position_embeddings,
                       help="context length of the model (prompt + response)")
    build.add_argument("--eval-max-new-tokens", type=int, default=16, help="response budget of the base evaluation")
    build.add_argument("--min-value", type=int, default=ProblemRanges.min_value)
    build.add_argument("--max-value", type=int, default=ProblemRanges.max_value)
    build.add_argument("--min-target", type=int, default=ProblemRanges.min_target)
    build.add_argument("--max-target", type=int, default=ProblemRanges.max_target)
    build.add_argument("--eval-size", type=int, default=500, help="held-out problems")
    build.add_argument("--eval-seed", type=int, default=1000, help="seed of the held-out problems")
    build.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    for f in dataclasses.fields(TraceShape):  # the thinker's habits (--format think only)
        build.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(TRACE_DEFAULTS, f.name)),
                           default=getattr(TRACE_DEFAULTS, f.name), help=f"think traces: {f.name} (see thinking.py)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.docs < 1 or args.eval_size < 1:
        parser.error("--steps, --batch-size, --docs and --eval-size must be >= 1")
    if args.heads < 1 or args.hidden_size % args.heads:
        parser.error(f"--hidden-size ({args.hidden_size}) must be a multiple of --heads ({args.heads})")
    if args.max_positions < 8 + args.eval_max_new_tokens:
        parser.error(f"--max-positions ({args.max_positions}) must hold the 8-token prompt and "
                     f"--eval-max-new-tokens ({args.eval_max_new_tokens})")
    try:
        trace_shape(args)
    except ValueError as err:
        parser.error(f"think traces: {err}")
    return args


def trace_shape(args: argparse.Namespace) -> TraceShape:
    return TraceShape(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TraceShape)})


def eval_problems(ranges: ProblemRanges, n: int, seed: int):
    """The held-out set: the trainer's tiny preset must use this same call."""
    from fastzero.tasks.countdown.problems import generate_problems

    return generate_problems(n, seed=seed, min_numbers=3, max_numbers=3, min_value=ranges.min_value,
                             max_value=ranges.max_value, min_target=ranges.min_target,
                             max_target=ranges.max_target)


@torch.no_grad()
def greedy_accuracy(model, tokenizer, problems, *, max_new_tokens: int = 16, batch_size: int = 250) -> float:
    """Share of problems whose greedy answer scores 1.0 with the project's verifier.

    The trainer's own path (fastzero.episodes.sample_episodes with the hf engine and the Countdown
    scorer), so the accuracy recorded at build time is the one `python -m fastzero.train` reports.
    """
    from fastzero.episodes import countdown_scorer, sample_episodes, trim_stop
    from fastzero.rollout import SamplingParams, make_engine
    from fastzero.tasks.countdown.prompts import render_prompt

    eos_id, pad_id = tokenizer.token_to_id(EOS), tokenizer.token_to_id(PAD)
    engine = make_engine("hf", model=model, eos_token_ids=(eos_id,), seed=0, max_batch_size=batch_size,
                         pad_token_id=pad_id)
    prompts = [tokenizer.encode(render_prompt("compact", p.numbers, p.target)).ids for p in problems]

    def decode(responses: list[list[int]]) -> list[str]:
        return [tokenizer.decode(r, skip_special_tokens=False) for r in trim_stop(responses, (eos_id,))]

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=(eos_id,))
    correct = 1.0
    episodes = sample_episodes(engine, prompts, problems, params, decode=decode,
                               scorer=countdown_scorer(format_score=0.1, correct_score=correct))
    return sum(s == correct for s in episodes.scores) / len(problems)


def build(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    ranges = ProblemRanges(args.min_value, args.max_value, args.min_target, args.max_target)
    started = time.time()
    held_out = eval_problems(ranges, args.eval_size, args.eval_seed)
    print(f"[1/5] held-out set: {len(held_out)} problems, seed {args.eval_seed}, {ranges}")
    excluded = [(p.numbers, p.target) for p in held_out]
    max_integer = max(ranges.max_value, ranges.max_target)
    if args.format == "think":
        shape_of_traces = trace_shape(args)
        documents = build_thinking_documents(args.docs, seed=args.seed, ranges=ranges, shape=shape_of_traces,
                                             excluded=excluded)
        max_integer = max(max_integer, shape_of_traces.max_value_in_think)
        print(f"[2/5] corpus: {len(documents)} think traces, e.g. {documents[0][0]}{documents[0][1]!r}")
    else:
        documents = build_documents(args.docs, seed=args.seed, ranges=ranges, correct_fraction=args.correct_fraction,
                                    excluded=excluded)
        print(f"[2/5] corpus: {len(documents)} documents, {args.correct_fraction:.0%} correct, e.g. "
              f"{documents[0][0]}{documents[0][1]}")
    tokenizer = train_tokenizer((prompt + answer for prompt, answer in documents), max_integer=max_integer)
    ids, mask = encode_documents(tokenizer, documents)
    print(f"[3/5] tokenizer: {tokenizer.get_vocab_size()} tokens; rows {tuple(ids.shape)}")
    torch.manual_seed(args.seed)
    shape = ModelShape(hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.heads,
                       intermediate_size=args.intermediate_size, max_position_embeddings=args.max_positions)
    model = make_model(tokenizer.get_vocab_size(), shape, pad_id=tokenizer.token_to_id(PAD),
                       eos_id=tokenizer.token_to_id(EOS))
    n_params = sum(p.numel() for p in model.parameters())
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         length_buckets=args.format == "think")
    print(f"[4/5] pretraining {n_params:,} parameters for {cfg.steps} steps of {cfg.batch_size} rows")
    history = pretrain(model, ids, mask, cfg)
    accuracy = greedy_accuracy(model, tokenizer, held_out, max_new_tokens=args.eval_max_new_tokens)
    print(f"[5/5] base greedy accuracy on the held-out set: {accuracy:.1%}")
    recipe = {
        "problems": {**asdict(ranges), "numbers_per_problem": 3, "prompt_template": "compact"},
        "held_out": {"call": "fastzero.tasks.countdown.problems.generate_problems", "n": args.eval_size,
                     "seed": args.eval_seed, "min_numbers": 3, "max_numbers": 3, **asdict(ranges)},
        "corpus": {"format": args.format, "documents": args.docs, "seed": args.seed, "excludes_held_out": True,
                   **({"traces": asdict(trace_shape(args))} if args.format == "think"
                      else {"correct_fraction": args.correct_fraction})},
        "tokenizer": {"type": "WordLevel", "vocab_size": tokenizer.get_vocab_size(), "pad": PAD, "eos": EOS},
        "model": {"architecture": "Qwen2ForCausalLM", "parameters": n_params, **asdict(shape)},
        "pretrain": {**asdict(cfg), "loss_history": history, "seconds": round(time.time() - started, 1),
                     "threads": args.threads},
        "base_greedy_accuracy": accuracy,
        "command": command_line(args),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    notes = think_notes(recipe) if args.format == "think" else build_notes(recipe)
    save_checkpoint(model, tokenizer, args.out, recipe, notes, max_new_tokens=args.eval_max_new_tokens)
    print(f"wrote {args.out} in {time.time() - started:.0f}s")
    return recipe


def command_line(args: argparse.Namespace) -> str:
    """The full build command with every setting spelled out, so defaults may change safely."""
    # Options that do not apply to this --format are left out (they change nothing).
    unused = {f.name for f in dataclasses.fields(TraceShape)} if args.format == "direct" else {"correct_fraction"}
    options = {k: v for k, v in vars(args).items() if k != "command" and k not in unused}
    return "python -m fastzero.tiny build " + " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
                                                      for k, v in options.items())


def build_notes(recipe: dict) -> str:
    p, c, m, t = recipe["problems"], recipe["corpus"], recipe["model"], recipe["pretrain"]
    h = recipe["held_out"]
    return f"""# tiny-countdown

A {m['parameters']:,}-parameter Qwen2 ({m['hidden_size']} hidden, {m['num_hidden_layers']} layers, \
{m['num_attention_heads']} heads, tied embeddings) that answers compact Countdown prompts:
`3 7 12=22:` -> `<answer>12+7+3</answer><|endoftext|>`. Made by this project from synthetic data only.

- Problems: 3 numbers in {p['min_value']}..{p['max_value']}, targets {p['min_target']}..{p['max_target']}.
- Held-out set: `generate_problems({h['n']}, seed={h['seed']}, min_numbers=3, max_numbers=3, \
min_value={h['min_value']}, max_value={h['max_value']}, min_target={h['min_target']}, max_target={h['max_target']})`;
  excluded from the corpus by key (sorted numbers, target).
- Corpus: {c['documents']:,} documents, {c['correct_fraction']:.0%} a correct solution (uniform over all
  solutions), the rest a random well-formed expression over the numbers (seed {c['seed']}).
- Tokenizer: WordLevel trained on the corpus; whole integers, tags and single characters are tokens
  ({recipe['tokenizer']['vocab_size']} tokens). Load with `AutoTokenizer.from_pretrained(dir)`.
- Pretraining: {t['steps']} steps x {t['batch_size']} rows, AdamW lr {t['lr']} (warmup, cosine), loss on the
  answer only. The whole build took {t['seconds']}s on {t['threads']} CPU threads (a shared machine).
- Base greedy accuracy on the held-out set: {recipe['base_greedy_accuracy']:.1%}.

Rebuild: `{recipe['command']}` (fastzero/tiny/). See recipe.json for every setting.
"""


def think_notes(recipe: dict) -> str:
    p, c, m, t = recipe["problems"], recipe["corpus"], recipe["model"], recipe["pretrain"]
    h, tr = recipe["held_out"], recipe["corpus"]["traces"]
    return f"""# tiny-countdown-think

A {m['parameters']:,}-parameter Qwen2 ({m['hidden_size']} hidden, {m['num_hidden_layers']} layers, \
{m['num_attention_heads']} heads, tied embeddings, {m['max_position_embeddings']} positions) that thinks before it answers \
compact Countdown prompts, in R1-Zero's shape:
`3 7 12=22:` -> `<think>3*7=21 21-12=9 22-9=13\\n7+12=19 19+3=22 22-22=0</think><answer>7+12+3</answer><|endoftext|>`.
Made by this project from synthetic traces only (fastzero/tiny/thinking.py), deliberately a poor
teacher so that RL has room: it stops after a random number of candidates, hit or miss, and answers
with the last one; stopping at the first hit (a check "=0") is a choice the model already makes, at random moments.

- Problems: 3 numbers in {p['min_value']}..{p['max_value']}, targets {p['min_target']}..{p['max_target']}; \
the held-out set is `generate_problems({h['n']}, seed={h['seed']}, ...)` as for tiny-countdown, excluded from the corpus.
- Traces ({c['documents']:,}, seed {c['seed']}): candidate chains, one per line, line i led by the prompt's i-th \
number (at most 3 lines), each ending with its check (the distance to the target as "bigger-smaller=d"); after each \
line the thinker goes on with probability {tr['continue_rate']:.0%}, whatever the check said, and the answer copies \
the last candidate. A candidate is an untried real solution with its lead {tr['solution_rate']:.0%} of the time, \
else a random chain with its lead, never a repeat; each chain value is off by 1-3 with probability \
{tr['error_rate']:.0%}. Values in the think block stay in 0..{tr['max_value_in_think']}.
- Tokenizer: WordLevel; whole integers 0..{tr['max_value_in_think']}, tags, operators, space and newline are tokens \
({recipe['tokenizer']['vocab_size']} tokens). Load with `AutoTokenizer.from_pretrained(dir)`.
- Pretraining: {t['steps']} steps x {t['batch_size']} rows, AdamW lr {t['lr']} (warmup, cosine), loss on the \
response, summed over each batch and divided by the corpus's mean answer tokens per batch (so that length-bucketed \
batches weigh every token alike). The whole build took {t['seconds']}s on {t['threads']} CPU threads.
- Base greedy accuracy on the held-out set: {recipe['base_greedy_accuracy']:.1%}.

Rebuild: `{recipe['command']}` (fastzero/tiny/). See recipe.json for every setting.
"""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "build":
        build(args)


if __name__ == "__main__":
    main()
