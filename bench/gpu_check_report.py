"""results.md of bench/gpu_check.py: one table per kind of stage, ready to paste into bench/RESULTS.md."""
from __future__ import annotations


def render(results: dict) -> str:
    stages = results["stages"]
    title = "GPU check (dry run: tiny shapes on CPU, numbers mean nothing)" if results["dry_run"] else "GPU check"
    install = stages.get("install", {}).get("result") or {}
    lines = [f"## {title}", ""]
    if install:
        lines += [f"{install.get('gpu')}; torch {install.get('torch')}, triton {install.get('triton')}, "
                  f"transformers {install.get('transformers')}, Liger {'yes' if install.get('liger') else 'no'}", ""]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {s['status']}{': ' + s['why'] if 'why' in s else ''} | {s.get('seconds', '-')} |"
              for name, s in stages.items()]
    steps = [s["result"] for name, s in stages.items() if name.startswith("step_") and "result" in s]
    if steps:
        lines += ["", "Training step (random weights, hf engine; MFU = model FLOPs / time, % of the measured matmul rate):",
                  "", "| shape | phase | tokens/s | TFLOP/s | % of matmul | peak GiB | plan GiB |", "|---|---|---|---|---|---|---|"]
        for step in steps:
            for phase, e in step["phases"].items():
                lines.append(f"| {step['shape']} | {phase} | {e['tokens_per_s']:.0f} | {e['tflops']:.2f} | "
                             f"{e['mfu_pct_of_matmul']:.1f} | {e.get('peak_gib', '-')} | {e['plan_gib']} |")
        lines.append(f"\n(matmul rate measured: {', '.join(str(s['matmul_tflops']) for s in steps)} TFLOP/s; "
                     f"{steps[0]['rows']} rows x {steps[0]['prompt']} prompt + {steps[0]['response']} response tokens)")
    for name in ("bench_logprobs", "bench_loss"):
        result = stages.get(name, {}).get("result")
        if not result:
            continue
        lines += ["", f"{name} ({result.get('machine')}):", "",
                  "| shape | N | candidate | full ms | peak MB | TFLOP/s | % of matmul |", "|---|---|---|---|---|---|---|"]
        for row in result.get("rows", []):
            if "full_ms" in row:
                lines.append(f"| {row['shape']} | {row['N']} | {row['candidate']} | {row['full_ms']:.2f} | "
                             f"{row['peak_mb']:.0f} | {row['tflops']:.2f} | {row['pct_matmul']:.1f} |")
            else:
                lines.append(f"| {row['shape']} | {row['N']} | {row['candidate']} | {row.get('error', '-')} | | | |")
    grpo = stages.get("grpo_30", {}).get("result")
    if grpo:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in (grpo.get("phase_seconds") or {}).items())
        lines += ["", f"GRPO end to end: {grpo['steps']} steps, {grpo['seconds_per_step']} s/step, "
                      f"mean response {grpo['mean_response_length']} tokens, wall {grpo['wall_seconds']} s ({phases})"]
    return "\n".join(lines) + "\n"
