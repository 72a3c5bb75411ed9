"""FastZero's hot paths as Triton kernels (installed as `fastzero.kernels`).

- `fused_logprobs`: token log-probs and entropy straight from hidden states, in bounded chunks,
  never materializing [tokens x vocab] logits.
- `policy_loss`: the policy loss (LOSS_MODES: ppo clip, gspo, cispo) with KL and entropy terms and
  rollout-mismatch correction (IS_CORRECTIONS x IS_LEVELS, kernels/mismatch.py), forward and
  backward in one pass.
- `fused_linear_policy_loss`: that loss straight from hidden states, one pass over the vocabulary
  per chunk (logits once; the loss' gradient goes straight into the log-softmax backward).
- `token_weights` (kernels/aggregation.py): each token's coefficient in the batch loss, the one
  definition of the loss aggregations (AGGREGATIONS); both losses take it as `token_weight`.
- `group_advantages` (grpo, dr_grpo, rloo), `gae`, `whiten`, `reinforce_pp_advantages`.
Each has a plain PyTorch twin in `fastzero.kernels.reference`. The path is chosen per call from the
tensors' device (kernels/_dispatch.py); FASTZERO_KERNELS=auto|triton|torch|reference forces one.
"""
if __name__ == "kernels":
    # Imported under the top-level name `kernels`, which happens only when a checkout's root is on
    # sys.path (`python -m fastzero.train` from the repo root; pytest). That name belongs to Hugging
    # Face's `kernels` package, which transformers (>= 5.25) imports from modeling_utils: hand the
    # name over to it, so transformers gets what it asked for; where it is not installed, this stays
    # an empty module (transformers then sees no usable `kernels` and goes on without it).
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _elsewhere = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _checkout]
    _spec = _machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _module = _util.module_from_spec(_spec)
        _sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds
        _spec.loader.exec_module(_module)
else:
    from .advantage import gae, group_advantages, reinforce_pp_advantages, whiten
    from .aggregation import AGGREGATIONS, token_weights
    from .fused_policy_loss import fused_linear_policy_loss
    from .logprob import fused_logprobs
    from .loss_terms import KL_TYPES, LOSS_MODES, token_loss_terms
    from .mismatch import IS_CORRECTIONS, IS_LEVELS
    from .policy_loss import policy_loss

    __all__ = ["fused_logprobs", "fused_linear_policy_loss", "policy_loss", "token_loss_terms", "token_weights",
               "AGGREGATIONS", "KL_TYPES", "LOSS_MODES", "IS_CORRECTIONS", "IS_LEVELS", "group_advantages", "gae",
               "whiten", "reinforce_pp_advantages"]
