"""Lightning's model summary in one line."""

from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities import rank_zero_info


class BriefModelSummary(ModelSummary):
    """Lightning's model summary in one line: the parameter counts and size, and each top-level layer that has
    parameters. For the full table, give Lightning's own ModelSummary callback in trainer.callbacks."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = dict(summary_data)
        rows = zip(columns.get("Name", []), columns.get("Type", []), columns.get("Params", []), strict=True)
        layers = [
            f"{name} ({kind}, {params.strip()})" for name, kind, params in rows if params.strip() not in ("0", "")
        ]
        rank_zero_info(
            f"Model: {total_parameters:,} parameters, {trainable_parameters:,} trainable, {model_size:.2f} MB"
            + (f"; {', '.join(layers[:8])}{', ...' if len(layers) > 8 else ''}" if layers else "")
        )
