"""``python -m attnperf.batch``: the same as ``attnperf batch`` (kept for scripts and workflows that call it)."""

if __name__ == "__main__":
    from attnperf.cli import shim

    shim("batch")
