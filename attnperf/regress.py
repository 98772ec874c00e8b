"""``python -m attnperf.regress``: the same as ``attnperf regress`` (kept for scripts and workflows that call it)."""

if __name__ == "__main__":
    from attnperf.cli import shim

    shim("regress")
