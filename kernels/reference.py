"""Plain PyTorch twins of every kernel in fastzero.kernels, with the same signatures.

They are the readable definition of what each kernel computes, the oracle the tests compare the
kernels with (run in float64), and the path FASTZERO_KERNELS=reference forces. They favour clarity
over memory: fused_logprobs here materializes the [N, V] logits.
"""
from __future__ import annotations

import torch

# ---- log-probs and entropy from hidden states (kernels/logprob.py) --------------------------------

# ---- policy loss (kernels/policy_loss.py) ---------------------------------------------------------

# ---- advantages (kernels/advantage.py) ------------------------------------------------------------
