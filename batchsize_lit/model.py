"""The old import path of the bundled model: batchsize_lit.problems.regression holds it."""

from batchsize_lit.problems.regression import LinearRegressor

__all__ = ["LinearRegressor"]
