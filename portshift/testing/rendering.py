"""Every way an error can be shown, for tests that look for a secret in it."""

from __future__ import annotations

import traceback
from collections.abc import Callable


def renderings(e: BaseException, *, with_locals: bool = False) -> list[str]:
    """``str(e)``, ``repr(e)``, the whole traceback (chained exceptions included) and, with
    ``with_locals``, the traceback with every frame's local variables, as a crash reporter shows it."""
    out = [str(e), repr(e), "".join(traceback.format_exception(type(e), e, e.__traceback__))]
    if with_locals:
        out.append("".join(traceback.TracebackException.from_exception(e, capture_locals=with_locals).format()))
    return out


def raised_by(fn: Callable[[], object]) -> BaseException:
    """The exception ``fn()`` raises; fails the test when it returns."""
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - returned to the test
        return e
    raise AssertionError("expected an error")
