"""Tables for experiment reports: count accuracy per true count, and confusion matrices."""

from __future__ import annotations

import numpy as np


def accuracy_by_count(
    true_counts: np.ndarray, inferred_counts: np.ndarray
) -> dict[int, dict[str, float]]:
    """Per true count: number of images and the fraction whose inferred count is right."""
    table = {}
    for count in np.unique(true_counts):
        chosen = true_counts == count
        table[int(count)] = {
            "images": int(chosen.sum()),
            "accuracy": float((inferred_counts[chosen] == count).mean()),
        }
    return table


def accuracy_table_markdown(rows: dict[str, dict[int, dict[str, float]]]) -> str:
    """A Markdown table: one row per model, one column per true count (accuracy in %)."""
    counts = sorted({count for table in rows.values() for count in table})
    lines = [
        "| model | " + " | ".join(f"{c} digit{'s' if c != 1 else ''}" for c in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for name, table in rows.items():
        cells = [f"{100 * table[c]['accuracy']:.1f}%" if c in table else "-" for c in counts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
