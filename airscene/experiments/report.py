"""Tables for experiment reports: count accuracy per true count."""

from __future__ import annotations


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
