"""``python -m attnperf.cp``: the same as ``attnperf cp`` (kept for scripts and workflows that call it)."""

if __name__ == "__main__":
    from attnperf.cli import shim

    shim("cp")
