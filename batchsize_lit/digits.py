"""The old import path of the digits example, which configs and forks name: batchsize_lit.problems.digits holds it."""

from batchsize_lit.problems.digits import (
    N_CLASSES,
    N_FEATURES,
    N_SAMPLES,
    CNNClassifier,
    DigitsClassifier,
    DigitsDataModule,
    MLPClassifier,
)

__all__ = [
    "N_CLASSES",
    "N_FEATURES",
    "N_SAMPLES",
    "CNNClassifier",
    "DigitsClassifier",
    "DigitsDataModule",
    "MLPClassifier",
]
