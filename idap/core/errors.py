"""One-line error messages: what every door (CLI, workflow job) prints when a stage fails."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (a KeyError's without its quotes)."""
    text = str(e)
    if isinstance(e, KeyError):  # str() of a KeyError quotes it
        arg = e.args[0] if e.args else ""
        text = arg if isinstance(arg, str) and " " in arg else f"missing key {e}"
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__
