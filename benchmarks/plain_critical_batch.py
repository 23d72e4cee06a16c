"""The critical-batch grid of configs/study_critical_batch.yaml as a plain vectorized PyTorch script.

Written from the problem's definition, not from the template's code: y = 3x + 0.3·ε on 1000 even points in [0, 1]
(ε from a generator seeded 1234), split 800/100/100 by a permutation seeded 1235; a linear model initialised by
nn.Linear(1, 1) after torch.manual_seed(seed); each epoch's order a permutation from a generator seeded by a hash of
"seed:epoch"; plain SGD; the validation MSE checked after every step against 1.5, 1.25 and 1.1 × the least-squares
fit's, a target reached at the first step of a run of 20 checks under it; a run stops once the hardest has held, or at
1000 steps. The 50 runs (5 lr × 10 seeds) of a batch size train together: their weights are tensors of shape
[50, 1, 1], their batches [50, B, 1]. The steps reported are the hardest target's.

Prints one JSON object: {"seconds": ..., "steps_to_target": {"bs8_lr0.1_seed2": 123 or null, ...}}.
"""

import hashlib
import json
import time

import torch
from torch import nn

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
LRS = [0.05, 0.1, 0.2, 0.4, 0.75]
SEEDS = list(range(10))
MAX_STEPS, HOLD, TOLERANCES = 1000, 20, (0.5, 0.25, 0.1)


def data() -> tuple[torch.Tensor, ...]:
    x = torch.linspace(0, 1, 1000).unsqueeze(1)
    y = 3 * x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1234))
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1235))
    train, val = order[:800], order[800:900]
    return x[train], y[train], x[val], y[val]


def targets(xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> list[float]:
    """(1 + tolerance) × the validation MSE of the least-squares line through the training points (float64),
    easiest first."""
    design = torch.cat([xt.double(), torch.ones_like(xt.double())], dim=1)
    w, b = torch.linalg.lstsq(design, yt.double()).solution.flatten().tolist()
    optimum = float(((yv.double() - (w * xv.double() + b)) ** 2).mean())
    return [(1 + tolerance) * optimum for tolerance in TOLERANCES]


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    key = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=4).digest()
    return torch.randperm(n, generator=torch.Generator().manual_seed(int.from_bytes(key, "little")))


def run_batch_size(batch: int, xt, yt, xv, yv, goals: list[float]) -> list[int | None]:
    runs = [(lr, seed) for lr in LRS for seed in SEEDS]
    weights, biases = [], []
    for _, seed in runs:
        torch.manual_seed(seed)
        layer = nn.Linear(1, 1)
        weights.append(layer.weight.detach().clone())
        biases.append(layer.bias.detach().clone())
    w, b = torch.stack(weights), torch.stack(biases)  # [K, 1, 1], [K, 1]
    rate = -torch.tensor([lr for lr, _ in runs]).view(-1, 1)
    k = len(runs)
    reached = [[None] * len(goals) for _ in range(k)]  # per run and target: the step it holds from
    held, running = [[0] * len(goals) for _ in range(k)], list(range(k))
    step, epoch = 0, 0
    while running and step < MAX_STEPS:
        orders = torch.stack([epoch_order(seed, epoch, len(xt)) for _, seed in runs])
        for index in orders.split(batch, dim=1):
            xb, yb = xt[index], yt[index]  # [K, B, 1]
            w_leaf, b_leaf = w.clone().requires_grad_(), b.clone().requires_grad_()
            prediction = torch.baddbmm(b_leaf.unsqueeze(1), xb, w_leaf.transpose(1, 2))
            losses = ((prediction - yb) ** 2).mean(dim=(1, 2))
            gw, gb = torch.autograd.grad(losses.sum(), [w_leaf, b_leaf])
            active = torch.tensor(running)
            w[active] = torch.addcmul(w[active], gw[active], rate[active].view(-1, 1, 1))
            b[active] = torch.addcmul(b[active], gb[active], rate[active])
            step += 1
            with torch.no_grad():
                val = ((torch.baddbmm(b.unsqueeze(1), xv.expand(k, -1, -1), w.transpose(1, 2)) - yv) ** 2).mean((1, 2))
            for i, value in zip(list(running), val[running].tolist(), strict=True):
                for j, goal in enumerate(goals):
                    if value <= goal:
                        reached[i][j] = step if reached[i][j] is None else reached[i][j]
                        held[i][j] += 1
                    else:
                        reached[i][j], held[i][j] = None, 0
                if held[i][-1] >= HOLD:
                    running.remove(i)
            if not running or step >= MAX_STEPS:
                break
        epoch += 1
    # a target still within its hold when the run ends is not reached
    return [runs[-1] if held_run[-1] >= HOLD else None for runs, held_run in zip(reached, held, strict=True)]


def main() -> None:
    started = time.perf_counter()
    torch.set_num_threads(1)
    xt, yt, xv, yv = data()
    goals = targets(xt, yt, xv, yv)
    steps = {}
    for batch in BATCH_SIZES:
        reached = run_batch_size(batch, xt, yt, xv, yv, goals)
        for (lr, seed), value in zip([(lr, seed) for lr in LRS for seed in SEEDS], reached, strict=True):
            steps[f"bs{batch}_lr{lr}_seed{seed}"] = value
    print(json.dumps({"seconds": time.perf_counter() - started, "steps_to_target": steps}))


if __name__ == "__main__":
    main()
