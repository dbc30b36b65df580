"""rlinks: a link shortener whose click statistics are computed by BH2.

BH2 consumes an append-only log of hits behind a watermark and writes batched
per-code stats snapshots, exactly once, whatever crashes or retries happen.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
