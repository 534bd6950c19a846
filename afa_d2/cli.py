"""One error style for every command: the package's known errors become one line and exit status 2.

A known error is bad input the user can fix (a config value, an override key, a checkpoint that is
corrupt, untrusted, of another model or with a wrong hash, a fetch that failed, a name not in the zoo);
the message says what and how. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

__all__ = ["known_errors", "one_line", "run_command"]


def one_line(error: BaseException) -> str:
    """``str(error)`` on one line (multi-line messages, e.g. unknown override keys, joined by "; ")."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(error).__name__


def known_errors() -> tuple:
    """The exception types that mean bad input, for every command."""
    from afa_d2.engine.checkpoint import CheckpointShapeError, CorruptCheckpointError, UntrustedCheckpointError
    from afa_d2.hub import ChecksumError, FetchError
    from afa_d2.model_zoo import CheckpointMismatchError, NotInZooError

    return (ValueError, KeyError, FileNotFoundError, CheckpointMismatchError, CheckpointShapeError,
            CorruptCheckpointError, UntrustedCheckpointError, ChecksumError, FetchError, NotInZooError)


def run_command(prog: str, main: Callable, argv: Optional[Sequence[str]] = None, *, extra: tuple = ()) -> int:
    """``main(argv)``, with a known error (or one of ``extra``) printed as ``<prog>: error: <one line>`` on
    stderr and exit status 2. Returns what ``main`` returns, as an exit status (None and True are 0)."""
    try:
        ret = main(argv)
    except known_errors() + tuple(extra) as e:
        print("{}: error: {}".format(prog, one_line(e)), file=sys.stderr)
        return 2
    if ret is None or ret is True:
        return 0
    return ret if isinstance(ret, int) else 0
