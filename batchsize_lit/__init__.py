"""batchsize_lit: a PyTorch Lightning template for epoch-vs-batch-size studies with early stopping."""

from batchsize_lit.data import RegressionDataModule
from batchsize_lit.model import LinearRegressor

__all__ = ["LinearRegressor", "RegressionDataModule", "__version__"]
__version__ = "0.1.0"
