"""Argument types jsonargparse cannot write into a config.yaml by itself, registered so that a saved config runs."""

import torch
from jsonargparse.typing import get_registered_type, register_type


def register_config_types() -> None:
    """torch.device is written as its string ('cpu', 'cuda:0') and read back with torch.device. Without it, a default
    such as StochasticWeightAveraging's ``device=torch.device('cpu')`` is saved as "Unable to serialize instance cpu",
    with a warning, and the saved config.yaml fails to run."""
    if get_registered_type(torch.device) is None:  # a later jsonargparse or Lightning may register its own
        register_type(torch.device, serializer=str, deserializer=torch.device)
