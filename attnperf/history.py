"""``python -m attnperf.history``: the same as ``attnperf history`` (kept for scripts and workflows that call it)."""

if __name__ == "__main__":
    from attnperf.cli import shim

    shim("history")
