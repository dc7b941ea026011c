"""User-facing errors.

Anything a user can cause (a bad path, an unknown experiment, a bad config value, an unsupported
architecture, a corrupt checkpoint, a NaN loss) raises :class:`RankdecayError` with one sentence
naming the cause and the fix. The CLI prints that sentence and exits with code 2; no traceback
unless ``--debug``.

Messages raised by the library name the *Python* parameter (``workers``, ``rtol``), not a command
line flag: the same sentence reaches a notebook user. An error may say which parameter it is about
(``RankdecayError(message, param="workers")``); the CLI then adds the flag that sets it
(``[--workers]``), found from the command's parser. A dotted config key (``train.steps``), or
any param of a ``ConfigValueError`` (an experiment's top-level key such as ``losses``), is shown
as ``[--set KEY=…]``; ``resume`` and ``out`` map to ``--resume`` and ``--out`` of ``rankdecay run``.
"""

from __future__ import annotations


class RankdecayError(Exception):
    """An error the user can fix; its message is one sentence naming cause and fix."""

    exit_code: int = 2
    #: the library parameter(s) the error is about (the CLI names the flags that set them), or None
    param: str | tuple[str, ...] | None = None

    def __init__(self, *args: object, param: str | tuple[str, ...] | None = None) -> None:
        super().__init__(*args)
        if param is not None:
            self.param = param


class NonFiniteLossError(RankdecayError):
    """The training loss became NaN or Inf."""


# ------------------------------------------------------------------------------ errors by kind
# A bad argument is also the built-in error its nature says, so ``except ValueError`` (TypeError,
# FileNotFoundError, FileExistsError) catches it as it would catch numpy's or torch's; it stays a
# RankdecayError, so the CLI's one-sentence, exit-code-2 rule holds.


class RankdecayValueError(RankdecayError, ValueError):
    """An argument or config value out of range, inconsistent with another, or not one of the choices."""


class RankdecayTypeError(RankdecayError, TypeError):
    """An argument of the wrong type (a module where a tensor is expected, a str for a number)."""


class RankdecayFileNotFoundError(RankdecayError, FileNotFoundError):
    """A path the user named does not exist."""


class RankdecayFileExistsError(RankdecayError, FileExistsError):
    """An output path exists and rankdecay will not overwrite it."""
