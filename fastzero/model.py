"""Models for training: load a local HF causal LM, a critic on the same backbone, and per-token
log-probs of a response computed from hidden states (never [B, T, V] logits).

Backends are chosen once, at load time, and reported (ModelBackends):
- GPU: bf16; flash_attention_2 when flash_attn is importable, else SDPA; Liger's Triton RMSNorm,
  RoPE and SwiGLU when liger_kernel is installed (its fused-linear cross entropy is switched off:
  we never call the LM head through forward).
- CPU: fp32 and SDPA; no Liger (its kernels are Triton, GPU only).
With flash_attention_2 the padded batch is packed into one row whose position ids restart at 0 per
sequence (transformers then runs varlen attention with no padding FLOPs); with SDPA/eager the
padded batch goes through as is, since a packed row there would need a [total, total] mask.

Position ids follow one rule everywhere (the rollout engine uses it too): cumsum(mask) - 1, so a
left-padded row sees the same positions it would alone, and packed positions equal padded ones.
Nothing is ever downloaded: paths must be local directories (local_files_only=True).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager

import torch
from torch import nn

from . import cpu_attention
from .atomic import atomic_directory

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flash_attention_2", "eager")
DTYPES = ("auto", "float32", "bfloat16")  # what --dtype offers (any torch float name loads here)
AUTOCAST_DTYPES = ("off", "auto", "bfloat16")  # what --autocast offers
DEVICES = ("auto", "cpu", "cuda")
VALUE_HEAD_FILE = "value_head.safetensors"


@dataclasses.dataclass(frozen=True)
class ModelBackends:
    attn_implementation: str  # what transformers runs: flash_attention_2 | sdpa | eager
    liger: bool  # Liger RMSNorm/RoPE/SwiGLU patched in
    dtype: torch.dtype
    device: torch.device


# ---- loading ---------------------------------------------------------------------------------------


def check_model_dir(path: str | os.PathLike) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {str(directory)!r} (models are never downloaded)")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in model directory {str(directory)!r}")
    return directory


def _flash_attn_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def _liger_available() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(name: str) -> torch.device:
    """--device: auto = cuda when available, else cpu; cuda without a device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return device


def choose_backends(device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                    attn_implementation: str = "auto", use_liger: bool | None = None) -> ModelBackends:
    """Resolve "auto" choices for `device`; raise a clear error for a request that cannot be met."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    on_gpu = device.type == "cuda"
    if dtype == "auto":
        dtype = torch.bfloat16 if on_gpu else torch.float32
    elif isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        dtype = getattr(torch, dtype)
    flash = on_gpu and _flash_attn_available()
    if attn_implementation == "auto":
        attn_implementation = "flash_attention_2" if flash else "sdpa"
    elif attn_implementation == "flash_attention_2" and not flash:
        raise RuntimeError("attn_implementation='flash_attention_2' needs a CUDA device and `pip install flash-attn`")
    liger_ok = on_gpu and _liger_available()
    if use_liger and not liger_ok:
        raise RuntimeError("use_liger=True needs a CUDA device and `pip install liger-kernel`")
    return ModelBackends(attn_implementation, liger_ok if use_liger is None else bool(use_liger), dtype, device)


def finish_model(model: nn.Module, backends: ModelBackends, gradient_checkpointing: bool, *, move: bool = True) -> nn.Module:
    """Device, Liger patches (in place: no new parameters) and activation checkpointing; move=False
    for a model built on the meta device, which FSDP materializes on the device later."""
    if move:
        model.to(backends.device)
    if backends.device.type == "cpu" and backends.dtype in (torch.bfloat16, torch.float16):
        cpu_attention.install()  # the CPU's bf16 SDPA backward is ~8x slower than float32's
    if backends.liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # cross entropy stays ours: the LM head is never run through forward (see sequence_logprobs).
        _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                        cross_entropy=False, fused_linear_cross_entropy=False)
    if gradient_checkpointing:
        # transformers 5.x renamed it activation checkpointing; non-reentrant works with frozen inputs.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    logger.info("loaded %s: attention=%s liger=%s dtype=%s device=%s", type(model).__name__,
                backends.attn_implementation, backends.liger, backends.dtype, backends.device)
    return model


def load_causal_lm(path: str | os.PathLike, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
                   attn_implementation: str = "auto", gradient_checkpointing: bool = False,
                   use_liger: bool | None = None) -> tuple[nn.Module, ModelBackends]:
    """Load a local HF causal LM; returns (model, the backends chosen)."""
    directory = check_model_dir(path)
    backends = choose_backends(device, dtype, attn_implementation, use_liger)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=backends.dtype, local_files_only=True,
                                                 attn_implementation=backends.attn_implementation)
    return finish_model(model, backends, gradient_checkpointing), backends


def saved_dtype(choice: str, model_dir: str | os.PathLike) -> torch.dtype | None:
    """--save-dtype: auto = the dtype the source checkpoint's config.json names (None if it names none)."""
    if choice != "auto":
        return getattr(torch, choice)
    import json

    with open(Path(model_dir) / "config.json", encoding="utf-8") as fh:
        config = json.load(fh)
    name = config.get("dtype") or config.get("torch_dtype")
    return getattr(torch, name) if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype) else None


def save_model(model: nn.Module, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """save_pretrained, with floating-point weights cast to `dtype` (None: as they are in memory).

    Each tensor is cast once and aliases keep sharing it, so tied embeddings are still saved once."""
    if dtype is None or all(p.dtype == dtype for p in model.parameters() if p.is_floating_point()):
        model.save_pretrained(directory)
        return
    cast: dict[int, torch.Tensor] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            tensor = cast.setdefault(tensor.data_ptr(), tensor.detach().to(dtype))
        state[name] = tensor
    model.save_pretrained(directory, state_dict=state)
    import json

    config_path = Path(directory) / "config.json"  # transformers writes the in-memory dtype there
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = str(dtype).removeprefix("torch.")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def has_bf16_matrix_units(device: torch.device) -> bool:
    """A CPU with AMX (Sapphire Rapids and later), where bf16 matmuls run 4-5x float32's at the tiny
    models' shapes (bench/RESULTS.md, "bf16 on the AMX box"); elsewhere bf16 on the CPU buys less
    or costs (not measured here on a CPU without AMX)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch's own check of the CPU and the OS
    return device.type == "cpu" and probe is not None and bool(probe())


def autocast_dtype(choice: str, weights: torch.dtype, device: torch.device) -> torch.dtype | None:
    """--autocast resolved for this run: None (off) or the body's compute dtype. auto = bfloat16 on a
    CPU with AMX when the weights are float32, else off. Autocast exists to run float32 weights'
    matmuls in half precision; on half-precision weights it would change nothing, so asking for it
    by name there is an error rather than a silent no-op."""
    if choice not in AUTOCAST_DTYPES:
        raise ValueError(f"--autocast: {choice!r} is not one of {', '.join(AUTOCAST_DTYPES)}")
    if choice == "off":
        return None
    if choice == "auto":
        return torch.bfloat16 if weights == torch.float32 and has_bf16_matrix_units(device) else None
    if weights != torch.float32:
        raise ValueError(f"--autocast {choice}: needs float32 weights, but this run's are "
                         f"{str(weights).removeprefix('torch.')} (pass --dtype float32, or drop --autocast)")
    return getattr(torch, choice)


def body_autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """The context a training forward's model body runs in: torch.autocast in `dtype`, or nothing.

    On the CPU the attention of an autocast forward is sent through fastzero/cpu_attention.py, which
    runs it in float32, gradient or not: under autocast SDPA would run in bf16, whose CPU backward is
    ~8x slower than float32's and ate the matmuls' gain (bench/RESULTS.md, "bf16 on the AMX box"),
    and the reference's scoring must compute what the update's forward computes."""
    if dtype is None:
        return nullcontext()
    if device.type == "cpu":
        cpu_attention.install()
    return torch.autocast(device.type, dtype=dtype)


# ---- hidden states, LM head, packing ------------------------------------------------------------------


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """cumsum(mask) - 1, clamped at 0: each row counts from its own first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def lm_head_weight(model: nn.Module) -> torch.Tensor:
    """The [V, H] output projection (the embedding matrix itself when embeddings are tied)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no LM head")
    return head.weight


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The final-norm hidden states [B, T, H] of the model body (model.model for a causal LM)."""
    if position_ids is None and attention_mask is not None:
        position_ids = default_position_ids(attention_mask)
    if model.base_model is not model:
        from .sharding import is_sharded, root_hidden_states

        if is_sharded(model):  # through the root forward, so FSDP gathers the LM head (see sharding.py)
            return root_hidden_states(model, input_ids, attention_mask, position_ids)
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False)
    return out.last_hidden_state


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [1, total] the real tokens of every row, row after row
    position_ids: torch.Tensor  # [1, total] restarting at 0 for each row
    flat_index: torch.Tensor  # [total] where each packed token sits in the flattened [B * T] batch
    shape: tuple[int, int]  # (B, T) of the padded batch


def pack_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedBatch:
    """Padded [B, T] batch (padding at either end) -> one packed row; `flat_index` maps it back."""
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids and attention_mask must be the same [B, T]; got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    mask = attention_mask.bool().flatten()
    flat_index = mask.nonzero().squeeze(-1)
    positions = default_position_ids(attention_mask).flatten()[flat_index]
    return PackedBatch(input_ids.flatten()[flat_index][None], positions[None], flat_index,
                       (input_ids.shape[0], input_ids.shape[1]))


def uses_packing(model: nn.Module) -> bool:
    """Pack only where attention is varlen (flash_attention_2); elsewhere a packed row costs T^2 mask."""
    return getattr(model.config, "_attn_implementation", None) == "flash_attention_2"


def _token_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  packed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of the real tokens as [M, H] rows, and a map flat [B*T] position -> row (-1 pad)."""
    batch, width = input_ids.shape
    if packed:
        pk = pack_padded(input_ids, attention_mask)
        rows = hidden_states(model, pk.input_ids, None, pk.position_ids)[0]
        row_of = torch.full((batch * width,), -1, dtype=torch.long, device=input_ids.device)
        row_of[pk.flat_index] = torch.arange(pk.flat_index.numel(), device=input_ids.device)
        return rows, row_of
    rows = hidden_states(model, input_ids, attention_mask).flatten(0, 1)
    return rows, torch.arange(batch * width, device=input_ids.device)


# ---- log-probs of responses ----------------------------------------------------------------------------


@dataclasses.dataclass
class ResponseTokens:
    """The response tokens of a padded batch, flattened: what the LM head needs and nothing more."""

    hidden: torch.Tensor  # [N, H] hidden states that predict each response token
    targets: torch.Tensor  # [N] the response token ids
    flat_positions: torch.Tensor  # [N] each token's index into the flattened [B * T] batch

    def scatter(self, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """[N] per-token values back to a [B, T] tensor (0 off the response)."""
        return values.new_zeros(shape.numel()).scatter(0, self.flat_positions, values).view(shape)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """A [B, T] per-token tensor at the response positions, [N]."""
        return tensor.flatten()[self.flat_positions]


def response_tokens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    response_mask: torch.Tensor, *, packed: bool | None = None,
                    shared_prefix: bool = False, autocast: torch.dtype | None = None) -> ResponseTokens:
    """Run the body once and keep the hidden states that predict response tokens (no LM head).

    packed=None packs when the model runs flash_attention_2 (see uses_packing). shared_prefix: run
    each distinct prompt once and share its KV cache among its rows where that applies
    (fastzero.shared_prefix; the same hidden states up to rounding). autocast: run the body under
    torch.autocast in this dtype (--autocast; see body_autocast); the hidden states come back in
    the weights' dtype, so the LM head, log-probs and loss after it are computed as without.
    Differentiable.
    """
    if not (input_ids.shape == attention_mask.shape == response_mask.shape) or input_ids.dim() != 2:
        raise ValueError(f"input_ids, attention_mask and response_mask must share one [B, T] shape; got "
                         f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(response_mask.shape)}")
    response, real = response_mask.bool(), attention_mask.bool()
    if bool((response & ~real).any()):
        raise ValueError("response_mask marks padding positions (attention_mask == 0)")
    if bool(response[:, 0].any()):
        raise ValueError("response_mask marks column 0: a response token needs a token before it")
    flat_targets = response.flatten().nonzero().squeeze(-1)
    if not bool(real.flatten()[flat_targets - 1].all()):
        raise ValueError("a response token follows padding: attention_mask must be one contiguous run per row")
    weights_dtype = next(model.parameters()).dtype
    with body_autocast(input_ids.device, autocast):
        hidden = None
        if shared_prefix:
            from .shared_prefix import prefix_hidden

            hidden = prefix_hidden(model, input_ids, attention_mask, response_mask, flat_targets)
        if hidden is None:
            rows, row_of = _token_hidden(model, input_ids, attention_mask,
                                         uses_packing(model) if packed is None else packed)
            # The token at flat position p is predicted by the hidden state at p - 1 (same row, checked above).
            hidden = rows[row_of[flat_targets - 1]]
    return ResponseTokens(hidden.to(weights_dtype), input_ids.flatten()[flat_targets], flat_targets)


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, *, temperature: float = 1.0, return_entropy: bool = False,
                      packed: bool | None = None, shared_prefix: bool = False,
                      autocast: torch.dtype | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(input_ids[b, t] | input_ids[b, :t]) at response positions, as [B, T] fp32 (0 elsewhere).

    Only the hidden states that predict a response token go through the LM head, via
    fastzero.kernels.logprob.fused_logprobs (chunked; no [B, T, V] logits). With return_entropy also
    the entropy of each of those next-token distributions, aligned the same way. autocast: the
    body's compute dtype (see response_tokens). Differentiable.
    """
    from fastzero.kernels.logprob import fused_logprobs

    tokens = response_tokens(model, input_ids, attention_mask, response_mask, packed=packed,
                             shared_prefix=shared_prefix, autocast=autocast)
    result = fused_logprobs(tokens.hidden, lm_head_weight(model), tokens.targets,
                            temperature=temperature, return_entropy=return_entropy)
    if return_entropy:
        logp, entropy = result
        return tokens.scatter(logp, input_ids.shape), tokens.scatter(entropy, input_ids.shape)
    return tokens.scatter(result, input_ids.shape)


# ---- critic ----------------------------------------------------------------------------------------------


class CriticModel(nn.Module):
    """The policy's backbone (no LM head) plus a scalar value head: values [B, T] in fp32.

    The head is kept in fp32 (H + 1 numbers) whatever the backbone dtype: value regression targets
    are returns, and bf16 would round them to ~3 significant digits. Small random init (std = the
    config's initializer_range / sqrt(H)) and zero bias, so initial values are ~0.
    """

    def __init__(self, backbone: nn.Module, value_head: nn.Linear | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        if value_head is None:
            value_head = nn.Linear(hidden, 1, dtype=torch.float32, device=next(backbone.parameters()).device)
            std = getattr(backbone.config, "initializer_range", 0.02) / hidden ** 0.5
            nn.init.normal_(value_head.weight, std=std)
            nn.init.zeros_(value_head.bias)
        self.value_head = value_head

    @property
    def config(self):
        return self.backbone.config

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: str | torch.dtype = "auto",
                        device: str | torch.device = "cpu", attn_implementation: str = "auto",
                        gradient_checkpointing: bool = False, use_liger: bool | None = None) -> "CriticModel":
        """From a saved critic, or from a causal-LM directory (the body is taken, the head initialized)."""
        directory = check_model_dir(path)
        backends = choose_backends(device, dtype, attn_implementation, use_liger)
        from safetensors.torch import load_file
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(directory, dtype=backends.dtype, local_files_only=True,
                                             attn_implementation=backends.attn_implementation)
        critic = cls(finish_model(backbone, backends, gradient_checkpointing))
        head_file = directory / VALUE_HEAD_FILE
        if head_file.is_file():
            critic.value_head.load_state_dict(load_file(str(head_file), device=str(backends.device)))
        return critic

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write into a staging directory, then swap it in: never a half-written critic."""
        from safetensors.torch import save_file

        with atomic_directory(path) as staging:
            self.backbone.save_pretrained(staging)
            head = {k: v.detach().contiguous().cpu() for k, v in self.value_head.state_dict().items()}
            save_file(head, str(staging / VALUE_HEAD_FILE))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                packed: bool | None = None) -> torch.Tensor:
        """Values [B, T] (fp32; 0 at padding when packed, unspecified padding values otherwise)."""
        use_packing = uses_packing(self.backbone) if packed is None else packed
        rows, row_of = _token_hidden(self.backbone, input_ids, attention_mask, use_packing)
        values = self.value_head(rows.float()).squeeze(-1)
        if not use_packing:
            return values.view(input_ids.shape)
        flat_real = row_of >= 0
        out = values.new_zeros(input_ids.numel())
        return out.masked_scatter(flat_real, values).view(input_ids.shape)
