"""Counts in messages: "1 task", "2 tasks", never "1 tasks"."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 task"``, ``"0 tasks"``, ``"2 GPUs"``; ``plural`` for irregular nouns."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
