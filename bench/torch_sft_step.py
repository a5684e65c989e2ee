#!/usr/bin/env python3
"""SFT-step counterpart of the peer's DPO step (../shared/bench/torch_dpo_step.py), for side-by-side timing.

It imports the peer's model (Llama, PRESETS) from the directory given by --peer-dir, so both steps run the
same PyTorch model code. One SFT step = policy forward/backward of the mean NLL over the completion tokens
(mask from seq/4, label t+1 scored at t) of 2 * pairs random sequences + AdamW. Step 0 is a warm-up.
Prints one JSON line like the peer's: {"engine": "pytorch", "mode": "sft", "median_step_s": ..., ...}.
"""
import argparse, json, statistics, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--peer-dir", required=True)
ap.add_argument("--preset", default="stories15M"); ap.add_argument("--pairs", type=int, default=4)
ap.add_argument("--seq", type=int, default=128); ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--threads", type=int, default=0)
a = ap.parse_args()
sys.path.insert(0, a.peer_dir)
import torch  # noqa: E402
from torch_dpo_step import Llama, PRESETS, seq_logps  # noqa: E402

if a.threads: torch.set_num_threads(a.threads)
torch.manual_seed(0); c = PRESETS[a.preset]
policy = Llama(c, a.seq)
opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
rows = 2 * a.pairs
ids = torch.randint(0, c["vocab"], (rows, a.seq)); mask = torch.zeros_like(ids, dtype=torch.float); mask[:, a.seq // 4:] = 1
n_tokens = mask[:, 1:].sum()
times = []
for step in range(a.steps + 1):
    t0 = time.perf_counter()
    loss = -seq_logps(policy(ids), ids, mask).sum() / n_tokens
    opt.zero_grad(); loss.backward(); opt.step()
    if step: times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(json.dumps({"engine": "pytorch", "version": torch.__version__, "threads": torch.get_num_threads(), "preset": a.preset,
                  "mode": "sft", "params": sum(x.numel() for x in policy.parameters()), "pairs": a.pairs, "seq": a.seq,
                  "median_step_s": round(med, 4), "tokens_per_s": round(rows * a.seq / med, 1)}))
