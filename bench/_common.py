"""Shared bits of the bench scripts; they live in `wemap.benchmarks.report` (so they ship in the wheel)."""

from __future__ import annotations

from wemap.benchmarks.report import cpu_model, git_commit, machine, markdown_table, write_json

__all__ = ["cpu_model", "git_commit", "machine", "markdown_table", "write_json"]
