"""Both policy-loss kernels compile for an H100 (sm_90) without a GPU, in every variant.

The interpreter accepts things the GPU compiler rejects (non-constexpr globals, dtype mixes), so
every loss mode x correction weight x optional term is compiled to a cubin offline (Triton ships
ptxas; no driver needed), in a fresh process without TRITON_INTERPRET (the interpreter patches
triton.language while kernels run) and with a private cache, so each run really compiles.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMPILE_FOR_H100 = """
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastzero.kernels.fused_policy_loss import _token_loss_kernel
from fastzero.kernels.policy_loss import _policy_loss_fwd_kernel

def compile(kernel, types, constants):
    source = ASTSource(fn=kernel, signature=dict(zip(kernel.arg_names, types)), constexprs=constants)
    assert triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm.get("cubin"), constants

count = 0
fused_types = ["*fp32"] * 10 + ["i32", "i32"] + ["fp32"] * 5 + ["constexpr"] * 6
for i, (ref, dual, is_weight, mode) in enumerate(itertools.product([False, True], [False, True], [False, True], range(3))):
    compile(_token_loss_kernel, fused_types, {"HAS_REF": ref, "HAS_DUAL_CLIP": dual, "HAS_IS_WEIGHT": is_weight,
                                              "KL_TYPE": i % 3, "MODE": mode, "BLOCK": 1024})
    count += 1
two_pass_types = ["*fp32"] * 3 + ["*u8"] + ["*fp32"] * 8 + ["i32"] * 3 + ["fp32"] * 5 + ["constexpr"] * 9
for i, (terms, is_weight, mode) in enumerate(itertools.product([False, True], [False, True], range(3))):
    compile(_policy_loss_fwd_kernel, two_pass_types,
            {"HAS_REF": terms, "HAS_ENTROPY": terms, "HAS_DUAL_CLIP": terms, "HAS_IS_WEIGHT": is_weight,
             "KL_TYPE": i % 3, "MODE": mode, "WRITE_DLOGP": True, "WRITE_DENT": terms, "BLOCK_T": 64})
    count += 1
print(f"compiled {count} variants")
"""


@pytest.mark.slow
def test_loss_kernels_compile_for_h100_without_a_gpu(tmp_path):
    pytest.importorskip("triton")
    env = {k: x for k, x in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_H100], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0 and "compiled 36 variants" in done.stdout, done.stderr[-3000:]
