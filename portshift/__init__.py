"""portshift: export call recordings, transcripts and metadata into your own bucket."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Decorate plugin functions with this to implement a portshift hook.
hookimpl = pluggy.HookimplMarker("portshift")

__all__ = ["__version__", "hookimpl"]
