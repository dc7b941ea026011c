"""Command line: ``rankdecay analyze | run | list | sweep | report`` (also ``python -m rankdecay``).

One module per command in this package (:mod:`~rankdecay.cli.analyze`, :mod:`~rankdecay.cli.run`,
:mod:`~rankdecay.cli.catalog` for ``list``, :mod:`~rankdecay.cli.sweep`,
:mod:`~rankdecay.cli.report`) owns its arguments and its terminal output: it defines
``configure_parser(parser)`` and ``run_cli(args) -> int``. Only the command being run is imported
and configured, and the command modules import the library inside ``run_cli``: ``rankdecay
--help``, ``rankdecay <command> --help`` (``sweep`` asks the executors, and the ensemble executor
lives in a torch module) and ``rankdecay report`` of a run do not import torch. This file only
dispatches, and turns the errors a user can cause
(:class:`~rankdecay.errors.RankdecayError`) into one sentence on stderr and exit code 2; when the
error names the library parameter it is about (``exc.param``), the flag that sets it is appended.

Threads: a command whose parser has ``--threads`` runs with that many torch threads (default
:func:`rankdecay.threads.default_threads`); the OpenMP wait policy is set before torch is imported
(:func:`rankdecay.threads.cli_environment`, called by ``rankdecay/__init__.py`` and
``rankdecay/__main__.py``). A command module that computes nothing with torch says so with
``USES_TORCH = False`` (``report``): its threads are set only when torch is already imported, so
the command does not import torch to size a pool it never uses.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from ..errors import RankdecayError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["COMMANDS", "build_parser", "flag_for", "main", "show_warning", "stdout_console"]

#: command → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("rankdecay.cli.analyze", "per-head spectra of a model's QK and OV circuits"),
    "run": ("rankdecay.cli.run", "one run of a named experiment"),
    "list": ("rankdecay.cli.catalog", "experiments, presets and config keys"),
    "sweep": ("rankdecay.cli.sweep", "a grid of runs on local processes, an ensemble or Ray"),
    "report": ("rankdecay.cli.report", "HTML report and figures of a run or a sweep"),
}


def _command_in(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is one), or None."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(
    argv: list[str] | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The ``rankdecay`` parser and the command modules it configured, by command name.

    Every command is listed (with its one-line help); the command named in ``argv`` — every
    command when ``argv`` is None — is also configured, which imports its module.
    """
    parser = argparse.ArgumentParser(
        prog="rankdecay",
        description="See and steer how regularization shapes the rank of attention layers.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = set(COMMANDS) if argv is None else {_command_in(argv)}
    modules: dict[str, object] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
        if name in wanted:
            module = importlib.import_module(module_name)
            module.configure_parser(p)  # type: ignore[attr-defined]
            modules[name] = module
    return parser, modules


def show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """Warnings as one line on stderr: ``rankdecay: warning: <sentence>`` (no source line)."""
    print(f"rankdecay: warning: {message}", file=sys.stderr)


def stdout_console(**options: Any) -> Console:
    """A rich ``Console`` (``options`` as for it) whose broken pipe ends the command like every
    other write to a closed stdout: :func:`main` returns 141. rich's own handler exits with 1."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _Console(**options)


def flag_for(parser: argparse.ArgumentParser, param: str, config_key: bool = False) -> str | None:
    """The option string of ``parser`` that sets the library parameter ``param`` (or None).

    Matches an option whose ``dest`` is ``param`` or whose spelling is ``--param-with-dashes``;
    returns the first (longest-lived) spelling, e.g. ``--threads`` for ``threads``. A dotted config
    key (``train.device``), or any key when ``config_key`` (an experiment's top-level key such as
    ``losses``), is set with ``--set KEY=VALUE`` where the command has ``--set``.
    """
    if "." in param or config_key:
        has_set = any("--set" in a.option_strings for a in parser._actions)  # noqa: SLF001
        return f"--set {param}=…" if has_set else None
    spelled = "--" + param.replace("_", "-")
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        if not action.option_strings:
            continue
        if action.dest == param or spelled in action.option_strings:
            return spelled if spelled in action.option_strings else action.option_strings[0]
    return None


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:  # noqa: SLF001
            return action.choices[command]  # type: ignore[no-any-return]
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    parser: argparse.ArgumentParser | None = None
    args: argparse.Namespace | None = None
    try:
        parser, modules = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        module = modules[args.command]
        uses_torch = getattr(module, "USES_TORCH", True) or "torch" in sys.modules
        if hasattr(args, "threads") and uses_torch:
            from ..threads import default_threads, set_threads

            set_threads(args.threads or default_threads())
        return int(module.run_cli(args) or 0)  # type: ignore[attr-defined]
    except RankdecayError as exc:
        if debug:
            raise
        message = str(exc)
        if exc.param and parser is not None:
            sub = _subparser(parser, getattr(args, "command", None))
            params = (exc.param,) if isinstance(exc.param, str) else exc.param
            # a ConfigValueError can only come from an imported rankdecay.validation (which
            # imports torch): look it up rather than import it
            validation = sys.modules.get("rankdecay.validation")
            key = validation is not None and isinstance(exc, validation.ConfigValueError)
            found = (flag_for(sub, p, config_key=key) for p in params)
            flags = [f for f in found if f and f not in message]
            if flags:
                message = f"{message} [{', '.join(flags)}]"
        print(f"rankdecay: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rankdecay: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (`rankdecay … | head`): stop quietly, with the status a
        # shell reports for a process ended by SIGPIPE; point stdout at /dev/null so that the
        # interpreter's final flush does not fail again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
