"""batchsize_lit: a PyTorch Lightning template for epoch-vs-batch-size studies with early stopping."""

__all__ = ["COMMAND", "LinearRegressor", "RegressionDataModule", "__version__"]
__version__ = "0.1.0"
# The command's name in usage lines and hints, from the package's: a fork that renames the package renames it too.
COMMAND = __name__.replace("_", "-")


def __getattr__(name: str) -> type:
    # The bundled problem is imported on first use, so that importing the package does not import Lightning:
    # `python -m batchsize_lit` imports it in __main__, with garbage collection paused.
    if name in ("LinearRegressor", "RegressionDataModule"):
        from batchsize_lit.problems import regression

        return getattr(regression, name)
    raise AttributeError(f"module 'batchsize_lit' has no attribute {name!r}")
