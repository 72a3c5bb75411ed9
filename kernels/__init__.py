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
