"""User-facing errors.

Anything a user can cause (a bad path, an unknown experiment, a bad ``--set``, an unsupported
architecture, a corrupt checkpoint, a NaN loss) raises :class:`RankdecayError` with one sentence
naming the cause and the fix. The CLI prints that sentence and exits with code 2; no traceback
unless ``--debug``.
"""

from __future__ import annotations


class RankdecayError(Exception):
    """An error the user can fix; its message is one sentence naming cause and fix."""

    exit_code: int = 2


class NonFiniteLossError(RankdecayError):
    """The training loss became NaN or Inf."""
