"""Lightning's floor for a fit: Trainer(barebones=True) on the same model and data, validation included."""

import argparse

from lightning.pytorch import Trainer, seed_everything

from batchsize_lit import LinearRegressor, RegressionDataModule


class SilentRegressor(LinearRegressor):
    """LinearRegressor without its self.log calls, which barebones mode forbids; the metrics are still updated."""

    def on_train_epoch_end(self) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.val_mse.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n_samples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_epochs", type=int, default=20)
    args = parser.parse_args()
    seed_everything(0, verbose=False)
    trainer = Trainer(barebones=True, accelerator="cpu", max_epochs=args.max_epochs)
    data = RegressionDataModule(batch_size=args.batch_size, n_samples=args.n_samples)
    trainer.fit(SilentRegressor(), data)


if __name__ == "__main__":
    main()
