"""The critical-batch grid of configs/study_critical_batch.yaml as a plain vectorized PyTorch script.

Written from the problem's definition, not from the template's code: y = 3x + 0.3·ε on 1000 even points in [0, 1]
(ε from a generator seeded 1234), split 800/100/100 by a permutation seeded 1235; a linear model initialised by
nn.Linear(1, 1) after torch.manual_seed(seed); each epoch's order a permutation from a generator seeded by a hash of
"seed:epoch"; plain SGD; the validation MSE checked after every step against 1.1 × the least-squares fit's, the target
held once it stays there for 20 checks, or 3000 steps. The 15 runs (5 lr × 3 seeds) of a batch size train together:
their weights are tensors of shape [15, 1, 1], their batches [15, B, 1].

Prints one JSON object: {"seconds": ..., "steps_to_target": {"bs8_lr0.1_seed2": 123 or null, ...}}.
"""

import hashlib
import json
import time

import torch
from torch import nn

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
LRS = [0.05, 0.1, 0.2, 0.4, 0.75]
SEEDS = [0, 1, 2]
MAX_STEPS, HOLD, TOLERANCE = 3000, 20, 0.1


def data() -> tuple[torch.Tensor, ...]:
    x = torch.linspace(0, 1, 1000).unsqueeze(1)
    y = 3 * x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1234))
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1235))
    train, val = order[:800], order[800:900]
    return x[train], y[train], x[val], y[val]


def target(xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> float:
    """1.1 × the validation MSE of the least-squares line through the training points (float64)."""
    design = torch.cat([xt.double(), torch.ones_like(xt.double())], dim=1)
    w, b = torch.linalg.lstsq(design, yt.double()).solution.flatten().tolist()
    return (1 + TOLERANCE) * float(((yv.double() - (w * xv.double() + b)) ** 2).mean())


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    key = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=4).digest()
    return torch.randperm(n, generator=torch.Generator().manual_seed(int.from_bytes(key, "little")))


def run_batch_size(batch: int, xt, yt, xv, yv, goal: float) -> list[int | None]:
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
    reached: list[int | None] = [None] * k
    held, running = [0] * k, list(range(k))
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
            for i in list(running):
                if float(val[i]) <= goal:
                    reached[i] = step if reached[i] is None else reached[i]
                    held[i] += 1
                    if held[i] >= HOLD:
                        running.remove(i)
                else:
                    reached[i], held[i] = None, 0
            if not running or step >= MAX_STEPS:
                break
        epoch += 1
    return reached


def main() -> None:
    started = time.perf_counter()
    torch.set_num_threads(1)
    xt, yt, xv, yv = data()
    goal = target(xt, yt, xv, yv)
    steps = {}
    for batch in BATCH_SIZES:
        reached = run_batch_size(batch, xt, yt, xv, yv, goal)
        for (lr, seed), value in zip([(lr, seed) for lr in LRS for seed in SEEDS], reached, strict=True):
            steps[f"bs{batch}_lr{lr}_seed{seed}"] = value
    print(json.dumps({"seconds": time.perf_counter() - started, "steps_to_target": steps}))


if __name__ == "__main__":
    main()
