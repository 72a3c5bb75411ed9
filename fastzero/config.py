"""The one config definition: dataclasses (with help text and defaults), config files, validation.
The named presets over it are fastzero/presets.py.

A run's config is built in layers: the dataclass defaults (which are the `tiny-direct` preset),
then a named preset (`tiny-cpu` when none is given), then a `--config FILE` (JSON or TOML, flat or
by section), then command-line options. Every field is one `--option` on the command line, named
after the field (`max_steps` -> `--max-steps`; a field may carry another option name, as
`estimator` is `--algorithm`), so option names are unique across sections. Choice lists are
imported from the module that implements them. `validate` checks every value and every conflict
before any work starts and names the option at fault.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from fastzero.kernels import IS_CORRECTIONS, IS_LEVELS, LOSS_MODES
from fastzero.kernels.aggregation import AGGREGATIONS
from fastzero.kernels.policy_loss import KL_TYPES

from .algorithms import ALGORITHMS, GROUP_METHODS, TOKEN_METHODS
from .model import ATTN_IMPLEMENTATIONS, AUTOCAST_DTYPES, DEVICES, DTYPES
from .rollout import ENGINE_KINDS
from .tasks.countdown.problems import MAX_NUMBERS, MAX_VALUE
from .tasks.countdown.prompts import TEMPLATES
from .tasks.registry import BUILTIN_TASKS, DEFAULT_TASK, check_task_name
from .tasks.sandbox import SandboxOptions
from .tasks.spec import check_spec

EMBEDDED_MODEL = "embedded:tiny-countdown"  # the tiny Qwen2 shipped in fastzero/assets/
THINKING_MODEL = "embedded:tiny-countdown-think"  # its sibling that thinks before it answers
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
_EMBEDDED = "embedded:"
# Where Trainer.step takes the old policy's log-probs from (fastzero/trainer.py; it imports this module).
OLD_LOGPROBS = ("recompute", "rollout")
# The learning rate after the warm-up (fastzero/optim.py; it imports this module).
LR_SCHEDULES = ("constant", "cosine", "linear")


def resolve_model_path(path: str) -> str:
    """The directory behind a --model-path value (`embedded:NAME` is fastzero/assets/NAME)."""
    return os.path.join(ASSETS, path[len(_EMBEDDED):]) if path.startswith(_EMBEDDED) else path


def opt(default: Any, help: str, choices: tuple | None = None, *, option: str | None = None) -> Any:
    """A config field; `option` names its --option when that differs from the field's name."""
    return field(default=default, metadata={"help": help, "choices": choices, "option": option})


@dataclass
class ModelConfig:
    model_path: str = opt(EMBEDDED_MODEL, "local Hugging Face causal-LM directory (never downloaded)")
    critic_path: str | None = opt(None, "critic backbone directory for PPO (default: the model's)")
    dtype: str = opt("auto", "parameter dtype: auto = bfloat16 on GPU, float32 on CPU",
                     DTYPES)
    autocast: str = opt("off", "training forwards (update, reference and old-policy scoring) with the model body "
                               "under torch.autocast in this dtype and float32 weights; the LM head, log-probs, loss "
                               "and rollouts stay float32. auto = bfloat16 on a CPU with AMX when the weights are "
                               "float32, else off (there the thinking preset's update runs a fifth faster)",
                        AUTOCAST_DTYPES)
    attn_implementation: str = opt("auto", "attention: auto = flash_attention_2 if installed on GPU, else sdpa",
                                   ATTN_IMPLEMENTATIONS)
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    lora_rank: int = opt(0, "LoRA rank r of the policy's adapters through PEFT (0 = full fine-tuning); "
                            "the reference is the base with adapters disabled")
    lora_alpha: float = opt(32.0, "LoRA alpha (the adapter's update is scaled by alpha / r)")
    lora_targets: str = opt("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                            "comma-separated module names that get LoRA adapters (never lm_head or embed_tokens)")
    lora_save_merged: bool = opt(False, "also write the merged (base + adapter) model into final/ besides final/adapter/")
    save_dtype: str = opt("auto", "dtype of final/: auto = the source checkpoint's (a bf16 model trained in fp32 "
                                  "on CPU is saved as bf16)", ("auto", "float32", "bfloat16"))


@dataclass
class DataConfig:
    task: str = opt(DEFAULT_TASK, f"the task: {', '.join(BUILTIN_TASKS)}, or module.path:factory for your own "
                                  "(docs/tasks.md)")
    train_path: str | None = opt(None, "training problems (.parquet/.jsonl: Countdown ours or TinyZero's; "
                                       "arithmetic GSM8K's); none = generate")
    test_path: str | None = opt(None, "held-out problems for evaluation; none = generate")
    num_train: int = opt(8000, "problems to generate when train_path is not given")
    num_test: int = opt(500, "held-out problems (generated, or the first N loaded); disjoint from train")
    min_numbers: int = opt(3, "fewest numbers in a generated problem")
    max_numbers: int = opt(3, f"most numbers in a generated problem (<= {MAX_NUMBERS})")
    min_value: int = opt(1, "smallest number in a generated problem")
    max_value: int = opt(20, "largest number in a generated problem")
    min_target: int = opt(1, "smallest generated target")
    max_target: int = opt(50, "largest generated target (arithmetic: the largest answer and intermediate count)")
    data_seed: int = opt(1000, "seed of problem generation: the held-out split is generate_problems(num_test, seed=data_seed), "
                                "the training problems use data_seed + 1 and exclude it (1000 = the split the tiny model never saw)")
    template: str = opt("compact", f"prompt template (built-in tasks: {' / '.join(TEMPLATES)}; "
                                   "a task of your own names its own)")
    max_prompt_tokens: int = opt(256, "longest prompt in tokens; longer prompts are an error")
    skip_bad_rows: bool = opt(False, "skip (and count) malformed rows in data files instead of failing")


@dataclass
class RolloutConfig:
    engine: str = opt("auto", "rollout engine: auto = sglang when importable with CUDA, else hf",
                      ENGINE_KINDS, option="rollout")
    prompts_per_step: int = opt(64, "prompts sampled per RL step")
    samples_per_prompt: int = opt(8, "completions per prompt (the group size for GRPO-family methods)")
    max_new_tokens: int = opt(14, "longest response in tokens")
    temperature: float = opt(1.0, "sampling temperature for rollouts (evaluation is greedy)")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    top_k: int = opt(0, "top-k sampling (0 = off)")
    gen_batch_size: int = opt(512, "hf engine: sequences decoded together")
    sglang_mem_fraction: float = opt(0.5, "sglang: GPU memory share for weights + KV cache")
    sglang_tp: int = opt(1, "sglang: tensor-parallel size; under torchrun one engine per group of this many "
                            "consecutive ranks on one node (must divide --nproc-per-node)")
    sync_bucket_mb: int = opt(512, "weight sync to the rollout engine in buckets of this many MB")
    dynamic_sampling: bool = opt(False, "DAPO dynamic sampling: drop groups whose rewards all agree and sample more "
                                        "prompts until the step has prompts_per_step groups")
    max_sampling_rounds: int = opt(3, "dynamic sampling: most generation rounds per step (then train on what was kept)")
    overlong_buffer: int = opt(0, "DAPO soft overlong penalty over the last N tokens before --max-new-tokens (0 = off)")
    overlong_penalty: float = opt(1.0, "the soft overlong penalty at the length cap (it ramps linearly from 0)")
    mask_truncated: bool = opt(False, "DAPO overlong filtering: responses cut at --max-new-tokens carry no loss")


@dataclass
class AlgorithmConfig:
    estimator: str = opt("grpo", "advantage estimator (ppo = critic + GAE)", ALGORITHMS, option="algorithm")
    ppo_epochs: int = opt(1, "passes over each step's rollouts")
    mini_batch_size: int = opt(512, "sequences per optimizer step (must divide the step's sequences)")
    micro_batch_tokens: int = opt(16384, "token budget of one forward/backward (gradient accumulation)")
    clip_low: float = opt(0.2, "PPO ratio clip below 1")
    clip_high: float = opt(0.2, "PPO ratio clip above 1 (DAPO's clip-higher: > clip_low)")
    dual_clip: float | None = opt(None, "dual-clip bound c > 1 for negative advantages (off when unset)")
    kl_coef: float = opt(0.0, "KL-to-reference coefficient (0 = no reference model is loaded)")
    kl_type: str = opt("k3", "KL estimator", KL_TYPES)
    kl_in_reward: bool = opt(False, "apply KL as a per-token reward penalty (TinyZero) instead of in the loss")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient")
    fused_loss: bool = opt(True, "policy loss straight from hidden states in one pass over the vocabulary "
                                 "(false: log-probs, then the loss; the same numbers, more work)")
    shared_prefix: bool = opt(True, "training forwards run each distinct prompt once and share its KV cache among "
                                    "its samples (sdpa/eager attention; the same numbers up to rounding)")
    loss_agg: str = opt("token-mean", "loss aggregation", AGGREGATIONS)
    loss_mode: str = opt("ppo", "policy loss: ppo = token-ratio clip, gspo = sequence-ratio clip (geometric mean "
                                "of token ratios), cispo = clipped stop-gradient IS weight on a REINFORCE term", LOSS_MODES)
    old_logprobs: str = opt("recompute", "the old policy's log-probs in the PPO ratio when the update is off-policy (more "
                                         "than one optimizer step per batch): recompute = a no-grad forward of the "
                                         "policy before the update; rollout = the sampler's own, no forward (the same "
                                         "numbers when the engine samples with the trainer's weights and precision: "
                                         "the hf engine in float32; check mismatch_kl under recompute first)",
                            OLD_LOGPROBS)
    is_correction: str = opt("none", "rollout/training mismatch correction from the sampler's log-probs: "
                                     "tis = truncated IS weight min(ratio, cap), mis = drop where ratio leaves [1/cap, cap]",
                             IS_CORRECTIONS)
    is_level: str = opt("token", "mismatch ratio per token, or per sequence (product of its token ratios)", IS_LEVELS)
    is_cap: float = opt(2.0, "the mismatch correction's cap C (>= 1)")
    gamma: float = opt(1.0, "GAE discount (ppo, reinforce_pp)")
    lam: float = opt(1.0, "GAE lambda (ppo)")
    value_clip: float = opt(0.5, "PPO value-function clip range")
    format_score: float = opt(0.1, "reward for a well-tagged but wrong or invalid answer")
    correct_score: float = opt(1.0, "reward for a correct answer")


@dataclass
class OptimizerConfig:
    lr: float = opt(1e-4, "actor AdamW learning rate")
    critic_lr: float = opt(1e-5, "critic AdamW learning rate (ppo)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear learning-rate warmup, in optimizer steps")
    lr_schedule: str = opt("constant", "after the warm-up: constant, or a cosine / linear decay that reaches "
                                       "--min-lr-ratio x lr at --max-steps", LR_SCHEDULES)
    min_lr_ratio: float = opt(0.1, "the decaying schedules' last learning rate, as a share of lr (in [0, 1])")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)")
    max_bad_steps: int = opt(3, "stop after this many non-finite losses/gradients in a row")


@dataclass
class RunConfig:
    max_steps: int = opt(300, "RL steps")
    time_limit_minutes: float = opt(8.0, "stop RL after this many minutes, then evaluate (0 = no limit)")
    seed: int = opt(0, "seed of sampling, initialization and data order")
    device: str = opt("auto", "auto = cuda if available, else cpu", DEVICES)
    threads: int = opt(0, "CPU threads for torch (0 = all cores)")
    output_dir: str | None = opt(None, "where everything is written (default: runs/<timestamp>)")
    resume: str | None = opt(None, "resume the run in this output directory from its last checkpoint")
    eval_every: int = opt(50, "greedy evaluation on the held-out split every N steps (0 = start and end only)")
    save_every: int = opt(50, "atomic checkpoint every N steps (0 = only at the end and on Ctrl-C)")
    log_samples: int = opt(4, "sample completions written per step to samples.jsonl")
    price_per_hour: float = opt(0.0, "device price in $ per hour for the cost summary (0 = not priced)")
    progress: bool = opt(True, "show a progress bar on stderr")
    report_to: str = opt("none", "also log every metric to: none, tensorboard, wandb (offline), or both comma-separated")
    target_accuracy: float | None = opt(None, "stop at the first evaluation whose held-out accuracy reaches this; "
                                              "summary.json reports the steps, wall time and $ it took")
    max_cost_usd: float | None = opt(None, "stop with a checkpoint before the run's cost (--price-per-hour) passes this")
    max_device_hours: float | None = opt(None, "stop with a checkpoint before the run's device-hours pass this")
    plan: bool = opt(False, "print the per-GPU memory plan and exit, before loading anything")
    device_memory_gb: float = opt(0.0, "device memory the plan is checked against (0 = the GPU's own; "
                                       "none on CPU); a run whose plan does not fit stops before loading")
    dist_timeout: float = opt(600.0, "torchrun runs: seconds a collective waits for the other ranks before the job fails")
    fsdp_offload: bool = opt(False, "torchrun runs: keep sharded weights, gradients and optimizer state in CPU memory")


@dataclass
class RewardConfig:
    reward: str | None = opt(None, "your reward, module.path:function, run in sandboxed worker processes "
                                   "instead of the task's scorer (docs/tasks.md)")
    reward_per_sample: bool = opt(False, "call it as f(response, problem) -> float, not f(responses, problems) -> list")
    reward_timeout: float = opt(10.0, "seconds (wall and CPU) one call of the reward may take: one sample, or "
                                      "one worker's share of the batch")
    reward_memory_mb: int = opt(1024, "memory a reward worker may allocate beyond its loaded module (0 = no limit)")
    reward_workers: int = opt(0, "reward worker processes (0 = the usable cores, at most 16)")
    reward_fallback: float = opt(0.0, "reward of a sample whose reward timed out, raised or was not a finite number")
    reward_stall_seconds: float = opt(120.0, "stop the run (with a checkpoint) when no reward finishes for this long")


SECTIONS = {
    "model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig,
    "algorithm": AlgorithmConfig, "optimizer": OptimizerConfig, "run": RunConfig, "reward": RewardConfig,
}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """By section and option name: what config.json holds and load_config_file reads back."""
        return {section: {name: self.get(name) for name, (sec, _) in FIELDS.items() if sec == section}
                for section in SECTIONS}

    def get(self, name: str) -> Any:
        """The value of one option by its flat name (`max_steps`, `algorithm`)."""
        section, f = FIELDS[name]
        return getattr(getattr(self, section), f.name)

    def set(self, name: str, value: Any) -> None:
        """Set one option by its flat name (`max_steps`), converting strings to the field's type."""
        section, f = FIELDS[name]
        setattr(getattr(self, section), f.name, coerce(f, value))


def option_name(f: dataclasses.Field) -> str:
    return f.metadata.get("option") or f.name


# option name -> (section, dataclasses.Field); option names are unique across sections (asserted below).
FIELDS: dict[str, tuple[str, dataclasses.Field]] = {}
for _section, _cls in SECTIONS.items():
    for _f in dataclasses.fields(_cls):
        assert option_name(_f) not in FIELDS, f"duplicate config option {option_name(_f)}"
        FIELDS[option_name(_f)] = (_section, _f)


def field_type(f: dataclasses.Field) -> type:
    """The scalar type of a field ('float | None' -> float)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = text.replace(" ", "").replace("|None", "")
    return {"int": int, "float": float, "bool": bool, "str": str}[base]


def optional(f: dataclasses.Field) -> bool:
    return "None" in str(f.type)


INT_LIMIT = 2**63  # every integer option fits a signed 64-bit field (torch, numpy, safetensors)
SEED_LIMIT = 2**32  # seeds: what every RNG seeded from them accepts


def coerce(f: dataclasses.Field, value: Any) -> Any:
    flag = _flag(option_name(f))
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional(f)):
        if not optional(f):
            raise ValueError(f"{flag} cannot be empty")
        return None
    kind = field_type(f)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError  # `lr = true` in a config file is a mistake, not 1.0
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind is str and not isinstance(value, str):
            raise ValueError
        converted = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{flag}: {value!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(converted):
        raise ValueError(f"{flag}: must be a finite number, got {value!r}")
    if kind is int and not -INT_LIMIT <= converted < INT_LIMIT:
        raise ValueError(f"{flag}: {value!r} is too large (integers must fit in 64 bits)")
    return converted


RECORDED_FACTS = ("world_size",)  # what a run's config.json records beside the options

def read_config_file(path: str) -> dict[str, Any]:
    """The options of a JSON or TOML file as one flat dict (sections folded in), every problem one
    ValueError naming the file (and line and column for a syntax error)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: no such file {path!r}")
    if not path.endswith((".toml", ".json")):
        raise ValueError(f"--config: {path!r} must end in .json or .toml")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--config {path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    if path.endswith(".toml"):
        import tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:  # its message ends "(at line L, column C)"
            raise ValueError(f"--config {path}: invalid TOML: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the top level must be a table of options, not a {type(data).__name__}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and (isinstance(value, dict) or key not in FIELDS):  # "algorithm" is both
            if not isinstance(value, dict):
                raise ValueError(f"--config {path}: [{key}] must be a table of options, not a {type(value).__name__}")
            for inner, inner_value in value.items():
                if inner not in FIELDS or FIELDS[inner][0] != key:
                    raise ValueError(f"--config {path}: unknown option {key}.{inner}")
                flat[inner] = inner_value
        elif key in FIELDS:
            flat[key] = value
        elif key in RECORDED_FACTS:  # written into a run's config.json, not options
            continue
        else:
            raise ValueError(f"--config {path}: unknown option {key!r}")
    return flat


def load_config_file(config: Config, path: str) -> dict[str, Any]:
    """Apply a JSON or TOML file, flat ({"lr": 1e-5}) or by section ({"optimizer": {"lr": 1e-5}});
    returns the options it set, converted."""
    flat = read_config_file(path)
    for key, value in flat.items():
        try:
            config.set(key, value)
        except ValueError as err:
            raise ValueError(f"--config {path}: {err}") from None
    return {key: config.get(key) for key in flat}


# ---- validation ----------------------------------------------------------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_paths(config: Config) -> None:
    """Fail before any work when an input path does not exist (nothing is ever downloaded)."""
    model = resolve_model_path(config.model.model_path)
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise FileNotFoundError(f"--model-path: {config.model.model_path!r} is not a local model directory "
                                "with a config.json (FastZero never downloads weights)")
    for name in ("critic_path", "train_path", "test_path"):
        value = config.get(name)
        if value is not None and not os.path.exists(resolve_model_path(value)):
            raise FileNotFoundError(f"{_flag(name)}: {value!r} does not exist")


def check_weights(config: Config) -> None:
    """Fail before any work on missing, truncated or garbled safetensors (headers only, no loading).
    Runs after the memory plan, which needs config.json alone."""
    from .weights_check import weights_problem

    for name in ("model_path", "critic_path"):
        value = config.get(name)
        if value is not None and os.path.isdir(resolve_model_path(value)):
            problem = weights_problem(resolve_model_path(value))
            if problem is not None:
                raise ValueError(f"{_flag(name)}: {problem}")


def validate(config: Config) -> None:
    """Raise ValueError naming the option for any invalid value or conflicting pair."""
    for name, (section, f) in FIELDS.items():
        value = config.get(name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"{_flag(name)}: {value!r} is not one of {', '.join(choices)}")

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ValueError(f"{_flag(name)}: {what}")

    m, d, r, a, o, run = config.model, config.data, config.rollout, config.algorithm, config.optimizer, config.run
    for name, (section, f) in FIELDS.items():  # also for values set without coerce (Config(...) in code)
        value = config.get(name)
        if field_type(f) is float and value is not None:
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                 name, f"must be a finite number, got {value!r}")
        if field_type(f) is int and value is not None:
            need(isinstance(value, int) and -INT_LIMIT <= value < INT_LIMIT, name, "must fit in 64 bits")
    for name in ("seed", "data_seed"):
        need(0 <= config.get(name) < SEED_LIMIT, name, f"must be in 0..{SEED_LIMIT - 1}")
    for name in ("min_value", "max_value", "min_target", "max_target"):
        need(config.get(name) <= MAX_VALUE, name, f"must be <= {MAX_VALUE} (the exact solver's limit)")
    need(bool(m.model_path), "model_path", "this preset needs a local model directory (nothing is downloaded)")
    for name in ("num_test", "min_numbers", "min_value", "min_target", "max_prompt_tokens",
                 "prompts_per_step", "samples_per_prompt", "max_new_tokens", "gen_batch_size",
                 "ppo_epochs", "mini_batch_size", "micro_batch_tokens", "sync_bucket_mb", "sglang_tp",
                 "max_bad_steps"):
        need(config.get(name) >= 1, name, "must be >= 1")
    for name in ("num_train", "max_steps", "eval_every", "save_every", "log_samples", "warmup_steps",
                 "threads", "top_k"):
        need(config.get(name) >= 0, name, "must be >= 0")
    need(d.max_numbers <= MAX_NUMBERS, "max_numbers", f"the solver handles at most {MAX_NUMBERS} numbers")
    need(d.min_numbers <= d.max_numbers, "min_numbers", "must be <= --max-numbers")
    need(d.min_value <= d.max_value, "min_value", "must be <= --max-value")
    need(d.min_target <= d.max_target, "min_target", "must be <= --max-target")
    need(r.temperature > 0, "temperature", "rollouts sample: must be > 0 (evaluation is greedy anyway)")
    need(0 < r.top_p <= 1, "top_p", "must be in (0, 1]")
    need(0 < r.sglang_mem_fraction < 1, "sglang_mem_fraction", "must be in (0, 1)")
    need(a.clip_low >= 0, "clip_low", "must be >= 0")
    need(a.clip_high >= 0, "clip_high", "must be >= 0")
    need(a.dual_clip is None or a.dual_clip > 1, "dual_clip", "must be > 1")
    need(a.kl_coef >= 0, "kl_coef", "must be >= 0")
    need(a.entropy_coef >= 0, "entropy_coef", "must be >= 0")
    need(0 <= a.gamma <= 1, "gamma", "must be in [0, 1]")
    need(0 <= a.lam <= 1, "lam", "must be in [0, 1]")
    need(a.value_clip > 0, "value_clip", "must be > 0")
    need(a.format_score >= 0, "format_score", "must be >= 0")
    need(a.correct_score > a.format_score, "format_score", "must be below --correct-score (a correct answer earns most)")
    need(0 < o.lr <= 1, "lr", "must be in (0, 1]")  # beyond 1 AdamW diverges at once (or overflows float32)
    need(0 < o.critic_lr <= 1, "critic_lr", "must be in (0, 1]")
    need(o.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(0 <= o.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
    need(o.grad_clip >= 0, "grad_clip", "must be >= 0")
    need(run.time_limit_minutes >= 0, "time_limit_minutes", "must be >= 0")
    need(run.price_per_hour >= 0, "price_per_hour", "must be >= 0")
    need(run.device_memory_gb >= 0, "device_memory_gb", "must be >= 0")
    need(run.dist_timeout > 0, "dist_timeout", "must be > 0 seconds")
    validate_extensions(config, need)
    sequences = r.prompts_per_step * r.samples_per_prompt
    need(sequences % a.mini_batch_size == 0 or a.mini_batch_size >= sequences, "mini_batch_size",
         f"must divide --prompts-per-step x --samples-per-prompt = {sequences} (or be >= it)")
    if a.estimator in GROUP_METHODS:
        need(r.samples_per_prompt >= 2, "samples_per_prompt",
             f"{a.estimator} compares samples within a group: needs >= 2")
    need(not (a.old_logprobs == "rollout" and a.is_correction != "none"), "is_correction",
         "corrects the sampler's log-probs against the old policy's, but --old-logprobs rollout makes them the "
         "same (every ratio 1): use --old-logprobs recompute with it")
    if a.kl_in_reward:
        need(a.estimator in TOKEN_METHODS, "kl_in_reward",
             f"a per-token KL reward needs a token-level estimator (--algorithm {' or '.join(TOKEN_METHODS)})")
    need(not (r.engine == "sglang" and run.device == "cpu"), "rollout", "sglang needs --device cuda")
    need(m.autocast in ("off", "auto") or m.dtype in ("auto", "float32"), "autocast",
         f"runs float32 weights' matmuls in half precision; --dtype {m.dtype} weights are already half (drop one)")
    need(not (m.attn_implementation == "flash_attention_2" and _runs_on_cpu(run.device)), "attn_implementation",
         "flash_attention_2 needs a CUDA GPU; this run is on the CPU (use sdpa or auto)")
    validate_task(config)


def _runs_on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device != "auto":
        return False
    import torch

    return not torch.cuda.is_available()


def validate_task(config: Config) -> None:
    """The task and reward options: names of the right shape (nothing is imported yet), sandbox limits."""
    d = config.data
    check_task_name(d.task)
    if d.task in BUILTIN_TASKS and d.template not in TEMPLATES:
        raise ValueError(f"--template: {d.template!r} is not one of {', '.join(TEMPLATES)}")
    if d.task == "arithmetic" and d.max_target < d.max_value:
        raise ValueError("--max-target: the arithmetic task's largest answer must be >= --max-value")
    if config.reward.reward is not None:
        check_spec(config.reward.reward, "--reward")
    sandbox_options(config.reward)  # raises naming the option at fault


def sandbox_options(reward: RewardConfig) -> SandboxOptions:
    return SandboxOptions(timeout=reward.reward_timeout, memory_mb=reward.reward_memory_mb,
                          workers=reward.reward_workers, fallback=reward.reward_fallback,
                          per_sample=reward.reward_per_sample, stall_seconds=reward.reward_stall_seconds)


def validate_extensions(config: Config, need) -> None:
    """LoRA, DAPO sampling, stop rules and loggers (kept apart from the core checks above)."""
    m, r, run = config.model, config.rollout, config.run
    need(m.lora_rank >= 0, "lora_rank", "must be >= 0")
    if m.lora_rank:
        need(m.lora_alpha > 0, "lora_alpha", "must be > 0")
        targets = [t.strip() for t in m.lora_targets.split(",") if t.strip()]
        need(bool(targets), "lora_targets", "name at least one module")
        need(not {"lm_head", "embed_tokens"} & set(targets), "lora_targets",
             "lm_head and embed_tokens cannot carry adapters (the fused loss reads the LM-head weight directly)")
    need(m.lora_rank > 0 or not m.lora_save_merged, "lora_save_merged", "needs --lora-rank > 0")
    need(config.algorithm.is_cap >= 1, "is_cap", "must be >= 1")
    need(r.max_sampling_rounds >= 1, "max_sampling_rounds", "must be >= 1")
    if r.dynamic_sampling:
        need(r.samples_per_prompt >= 2, "dynamic_sampling", "needs --samples-per-prompt >= 2 (it drops groups)")
    need(0 <= r.overlong_buffer <= r.max_new_tokens, "overlong_buffer", "must be in [0, --max-new-tokens]")
    need(r.overlong_penalty >= 0, "overlong_penalty", "must be >= 0")
    from .loggers import parse_report_to
    parse_report_to(run.report_to)  # raises naming --report-to
    if run.target_accuracy is not None:
        need(0 < run.target_accuracy <= 1, "target_accuracy", "must be in (0, 1]")
    if run.max_cost_usd is not None:
        need(run.max_cost_usd > 0, "max_cost_usd", "must be > 0")
        need(run.price_per_hour > 0, "max_cost_usd", "needs --price-per-hour > 0 to know what a device-hour costs")
    if run.max_device_hours is not None:
        need(run.max_device_hours > 0, "max_device_hours", "must be > 0")


def options_markdown() -> str:
    """The README's options table (tests/test_config.py checks the README carries the current one)."""
    defaults = Config()
    lines = ["| option | default | what it does |", "|---|---|---|"]
    for name, (section, f) in FIELDS.items():
        choices = f.metadata.get("choices")
        text = f.metadata["help"] + (f" ({' / '.join(choices)})" if choices else "")
        lines.append(f"| `{_flag(name)}` | `{defaults.get(name)}` | {text} |")
    return "\n".join(lines)
