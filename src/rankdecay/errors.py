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

Errors by kind — which class to raise. Every error below is a :class:`RankdecayError` (exit code 2
in the CLI) and also the built-in its nature says, so ``except ValueError`` (``TypeError``, …)
catches it as it would catch numpy's or torch's:

=============================================  ==============================================
what went wrong                                raise
=============================================  ==============================================
an argument or config value out of range, not  :class:`RankdecayValueError` (or a subclass:
one of the choices, inconsistent with another  ``ConfigValueError``, ``ThreadCountError``,
one, or a model/architecture not supported     ``UnsupportedModelError``, ``NonFiniteInputError``)
an argument of the wrong type (a list where a  :class:`RankdecayTypeError` (``NotASinkError``)
tensor is expected, a str for a number)
a path the user named that does not exist      :class:`RankdecayFileNotFoundError`
                                               (``ModelNotFoundError``, ``MissingWeightsError``)
a file that exists but is corrupt, damaged or  :class:`RankdecayValueError`
not one of ours (bad JSON, wrong format)       (``CorruptCheckpointError``, ``CheckpointDamaged``)
an output path that exists and would be        :class:`RankdecayFileExistsError`
overwritten (a directory that holds a run)
an optional package (extra) not installed      :class:`MissingExtraError` (an ``ImportError``)
=============================================  ==============================================

What is not a bad argument stays a plain :class:`RankdecayError` or its own subclass: failures at
run time (:class:`NonFiniteLossError` for a NaN loss, a dead worker, a Ray cluster that cannot be
reached, a directory locked by another process), an operating-system error reading or writing a
file that exists (``FileWriteError`` is an ``OSError``), and a broken installation (a package
present without its data files). A new ``raise`` picks its class from this table; a kind-specific
subclass (``class CorruptCheckpointError(RankdecayError, ValueError)``) lists RankdecayError first.
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


class MissingExtraError(RankdecayError, ImportError):
    """An optional package (an extra such as ``rankdecay[hf]``) is not installed."""
