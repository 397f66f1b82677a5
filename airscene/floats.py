"""How this process's CPU computes floats: denormal floats flushed to zero.

A leaf module (it imports nothing of airscene, and torch only when called), so the command line
and Python callers set the same mode without importing the package front or the CLI.
"""

from __future__ import annotations


def flush_denormals() -> None:
    """Denormal floats flushed to zero in this process, before torch starts its threads (they
    inherit the setting; set later, it reaches the calling thread only). A trained grid model's
    activations fall into the denormal range, where the CPU computes slowly; flushed, its
    training ends with the same weights bit for bit (benchmarks/README.md, "Denormal floats").
    The model verbs call it first; Python callers call it (``airscene.flush_denormals``) before
    any torch work."""
    import torch

    torch.set_flush_denormal(True)
