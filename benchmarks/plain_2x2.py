"""The 2×2 study written as a plain PyTorch script: batch {16, 128} × epochs {5, 20}, SGD at lr 0.1, validation."""

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(1234)
    x = torch.linspace(0, 1, 1000).unsqueeze(1)
    y = 3 * x + 0.3 * torch.randn(x.shape, generator=generator)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1235))
    train, val = order[:800], order[800:900]
    for batch_size in (16, 128):
        for epochs in (5, 20):
            torch.manual_seed(0)
            model = nn.Linear(1, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True)
            for _ in range(epochs):
                losses = []
                for xb, yb in loader:
                    loss = F.mse_loss(model(xb), yb)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                with torch.no_grad():
                    val_loss = F.mse_loss(model(x[val]), y[val]).item()
            print(f"bs{batch_size}_ep{epochs}: train_loss {sum(losses) / len(losses):.5f}  val_loss {val_loss:.5f}")
    print(f"{time.perf_counter() - started:.2f} s after imports")


if __name__ == "__main__":
    main()
