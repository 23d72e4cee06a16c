"""µs per batch of the template's data path against plain tensor indexing and the default DataLoader."""

import argparse
import statistics
import time

import record
import torch
from torch.utils.data import DataLoader, TensorDataset

from batchsize_lit import RegressionDataModule


def per_batch(epoch, batches: int, repeats: int) -> float:
    """Median over repeats of the wall time of one epoch, per batch, in µs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        epoch()
        times.append((time.perf_counter() - started) / batches * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--batches", default="16,128,1024")
    parser.add_argument("--repeats", type=int, default=5)
    record.add_argument(parser)
    args = parser.parse_args()
    with record.Recording("data_path", args.record) as numbers:
        numbers["rows"] = measure(args)


def measure(args: argparse.Namespace) -> list[dict[str, float]]:
    """The table, printed row by row; its rows returned (µs per batch and the ratios)."""
    rows = []
    torch.set_num_threads(1)
    print("µs per batch over a whole shuffled epoch (median of", args.repeats, "epochs), CPU, 1 torch thread")
    print("(i) x[idx], y[idx] with idx sliced from torch.randperm  (t) the template's train_dataloader")
    print("(l) DataLoader(TensorDataset(x, y), shuffle=True), the default per-sample path\n")
    print(f"{'n':>8} {'batch':>5} {'batches':>8} {'(i)':>7} {'(t)':>7} {'(l)':>8} {'t/i':>5} {'l/i':>6}")
    for n in map(int, args.sizes.split(",")):
        for batch in map(int, args.batches.split(",")):
            dm = RegressionDataModule(n_samples=n, batch_size=min(batch, n // 2))
            if batch > dm.n_train:
                continue
            dm.setup()
            x, y = dm.train_set.tensors
            batches = dm.batches_per_epoch()
            template = dm.train_dataloader()
            default = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)

            def indexing(x=x, y=y, batch=batch) -> None:
                for index in torch.randperm(len(x)).split(batch):
                    x[index], y[index]

            def iterate(loader) -> None:
                for _ in loader:
                    pass

            i = per_batch(indexing, batches, args.repeats)
            t = per_batch(lambda loader=template: iterate(loader), batches, args.repeats)
            slow_repeats = 1 if n >= 1_000_000 else args.repeats  # (l) takes seconds an epoch at 1e6
            default_us = per_batch(lambda loader=default: iterate(loader), batches, slow_repeats)
            row = f"{n:>8} {batch:>5} {batches:>8} {i:>7.1f} {t:>7.1f} {default_us:>8.1f}"
            print(f"{row} {t / i:>5.2f} {default_us / i:>6.1f}", flush=True)
            rows.append({"n": n, "batch": batch, "batches": batches, "i": i, "t": t, "l": default_us})
            rows[-1] |= {"t/i": t / i, "l/i": default_us / i}
    return rows


if __name__ == "__main__":
    main()
