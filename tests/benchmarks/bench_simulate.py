"""`ctp simulate` cost: where a retrain's seconds go (training loop, ONNX export and files,
gate + canary), the quick demo's wall time, and one vs two torch threads on the tiny CNN."""

from __future__ import annotations

import tempfile
import time


def _thread_seconds(threads: int, steps: int = 100) -> float:
    import torch

    from components._shared.model.network import SmallCNN

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = SmallCNN(1, 10, 8)
        optimizer = torch.optim.Adam(model.parameters())
        x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(before)


def run() -> None:
    from pipelines.simulate import QUICK_POLICIES, SimulateConfig, simulate

    one, two = _thread_seconds(1), _thread_seconds(2)
    print(f"100 training steps (batch 32): 1 thread {one:.2f} s, 2 threads {two:.2f} s -> 2/1 = {two / one:.1f}x")

    with tempfile.TemporaryDirectory() as tmp:
        result = simulate(SimulateConfig(store_uri=tmp, scenario="quick", policies=QUICK_POLICIES), progress=False)
    retrains = [r["retrain"] for p in result["policies"] for r in p["steps"] if r["retrain"]]
    loop = sum(r["train_seconds"] for r in retrains)
    wall = sum(r["train_wall_seconds"] for r in retrains)
    judge = sum(r["judge_seconds"] for r in retrains)
    n = len(retrains)
    print(
        f"quick demo ({len(result['policies'])} policies, {n} retrains + bootstrap): "
        f"{result['wall_seconds']:.1f} s wall"
    )
    print(
        f"per retrain: training loop {loop / n:.2f} s, ONNX export + files {(wall - loop) / n:.2f} s, "
        f"gate + canary {judge / n:.2f} s"
    )
    print(
        f"export + files / training loop = {(wall - loop) / max(loop, 1e-9):.1f}x; "
        f"retrains are {100 * (wall + judge) / result['wall_seconds']:.0f}% of the wall time"
    )
