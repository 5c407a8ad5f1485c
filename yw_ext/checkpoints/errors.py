# yw_ext, AGPL-3.0 license
"""``CheckpointError`` and the one way checkpoint problems are reported: every problem listed in one error.

Torch-free: tensors are only asked for their ``.shape``.

Examples:
    >>> raise_problems("demo", ["model.0.conv.weight"], [], [])
    Traceback (most recent call last):
    ...
    yw_ext.checkpoints.errors.CheckpointError: demo: the checkpoint does not match the architecture.
      1 missing: model.0.conv.weight
"""

from __future__ import annotations

from typing import Any, Mapping

PROBLEMS_SHOWN = 50
"""Largest number of names listed per kind of problem (missing, unexpected, mis-shaped) in one error."""


class CheckpointError(ValueError):
    """A checkpoint that yw_ext cannot load, with the reason."""


def raise_problems(what: str, missing: list[str], unexpected: list[str], shapes: list[str], hint: str = "") -> None:
    """Raise one ``CheckpointError`` listing every problem (at most 50 of each kind); return when there is none.

    Args:
        what: What was being loaded (first line of the message).
        missing: Tensors the model needs that the checkpoint lacks.
        unexpected: Checkpoint tensors that map to nothing in the model.
        shapes: Descriptions of mis-shaped tensors.
        hint: An extra last line.

    Raises:
        CheckpointError: any list is non-empty.

    Examples:
        >>> raise_problems("demo", [], [], [])  # nothing to report
    """
    if missing or unexpected or shapes:
        lines = [f"{what}: the checkpoint does not match the architecture."]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                more = " ..." if len(items) > PROBLEMS_SHOWN else ""
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:PROBLEMS_SHOWN]) + more)
        if hint:
            lines.append(f"  {hint}")
        raise CheckpointError("\n".join(lines))


def check_state_dict(expected: Mapping[str, Any], given: Mapping[str, Any], what: str) -> None:
    """Raise ``CheckpointError`` listing every missing, unexpected and mis-shaped tensor.

    Args:
        expected: The model's state dict.
        given: The checkpoint's state dict.
        what: What was being loaded, for the message.

    Raises:
        CheckpointError: the two disagree in names or shapes.

    Examples:
        >>> import torch
        >>> check_state_dict({"a": torch.zeros(2)}, {"a": torch.ones(2)}, "demo")
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    raise_problems(what, missing, unexpected, shapes)


__all__ = ["CheckpointError", "check_state_dict", "raise_problems"]
