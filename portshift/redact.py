"""Redaction helpers: URLs without their secrets, text without known secrets."""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse

from .secrets import known_masks, masks_version

REDACTED = "[REDACTED]"


def redact_url(url: str) -> str:
    """``url`` without query string, fragment or userinfo: safe to log, store or show."""
    try:
        parts = urllib.parse.urlsplit(str(url))
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class _Node:
    """A node of a radix tree of masks: edges keyed by their first character."""

    __slots__ = ("edges", "end")

    def __init__(self) -> None:
        self.edges: dict[str, tuple[str, _Node]] = {}
        self.end = False  #: a mask ends here


def _add(root: _Node, mask: str) -> None:
    node, i, n = root, 0, len(mask)
    while i < n:
        edge = node.edges.get(mask[i])
        if edge is None:
            leaf = _Node()
            leaf.end = True
            node.edges[mask[i]] = (mask[i:], leaf)
            return
        label, child = edge
        k, m = 1, min(len(label), n - i)
        while k < m and label[k] == mask[i + k]:
            k += 1
        if k < len(label):  # split the edge; the new node is complete before it is published
            mid = _Node()
            mid.edges[label[k]] = (label[k:], child)
            node.edges[mask[i]] = (label[:k], mid)
            child = mid
        node, i = child, i + k
    node.end = True


def _remove(root: _Node, mask: str) -> None:
    node, i, n = root, 0, len(mask)
    path: list[tuple[_Node, str]] = []
    while i < n:
        edge = node.edges.get(mask[i])
        if edge is None or not mask.startswith(edge[0], i):
            return
        path.append((node, mask[i]))
        i += len(edge[0])
        node = edge[1]
    node.end = False
    while path and not node.end and not node.edges:  # drop branches that end nothing
        parent, key = path.pop()
        del parent.edges[key]
        node = parent


class _Masks:
    """Every registered mask in a radix tree, kept in step with :mod:`portshift.secrets`.

    Registering or forgetting a mask costs its length, and scrubbing a text costs about its
    length, whatever the number of masks: nothing is ever recompiled. Finding what changed
    takes one C-speed pass over the mask set (about 0.05 us per mask; the secrets module keeps
    no journal of changes). (A single regular expression of every mask cost about 0.3 ms
    per mask to compile and its scan grew with the number of masks too: a job whose plugin
    registered one signed link per call slowed down with the square of the number of calls.)
    """

    WARN_AT = 50_000  #: masks registered at once: a plugin is very likely not forgetting them

    def __init__(self) -> None:
        self.root = _Node()
        self.version = -1
        self.mirror: frozenset[str] = frozenset()
        self.starts: re.Pattern[str] | None = None  #: the characters a mask can start with
        self.start_keys: frozenset[str] = frozenset()
        self.warned = False
        self.lock = threading.Lock()

    def sync(self) -> None:
        version = masks_version()
        if version == self.version:
            return
        warn = 0
        with self.lock:
            version = masks_version()
            if version == self.version:
                return
            current = known_masks()
            for mask in current ^ self.mirror:  # one C-speed pass finds what changed
                if mask in current:
                    _add(self.root, mask)
                else:
                    _remove(self.root, mask)
            self.mirror = current
            keys = frozenset(self.root.edges)
            if keys != self.start_keys:
                self.start_keys = keys
                self.starts = re.compile("[" + "".join(re.escape(c) for c in sorted(keys)) + "]") if keys else None
            self.version = version
            if len(current) >= self.WARN_AT and not self.warned:
                self.warned, warn = True, len(current)
            elif len(current) < self.WARN_AT // 2:
                self.warned = False
        if warn:
            # not from here: scrub() runs inside a log handler's format()
            threading.Thread(target=_warn_many, args=(warn,), daemon=True).start()

    def sub(self, text: str) -> str:
        starts = self.starts
        if starts is None:
            return text
        root = self.root
        out: list[str] = []
        last = 0
        n = len(text)
        found = starts.search(text)
        while found is not None:
            i = found.start()
            node, j, end = root, i, 0
            while j < n:
                edge = node.edges.get(text[j])
                if edge is None or not text.startswith(edge[0], j):
                    break
                j += len(edge[0])
                node = edge[1]
                if node.end:
                    end = j  # the longest mask that starts at i wins
            if end:
                out.append(text[last:i])
                out.append(REDACTED)
                last = end
                found = starts.search(text, end)
            else:
                found = starts.search(text, i + 1)
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)


def _warn_many(count: int) -> None:
    logging.getLogger("portshift.redact").warning(
        "%d secret masks are registered: a plugin keeps registering short-lived secrets (signed links, "
        "tokens) without forget_mask; memory grows with them",
        count,
    )


_masks = _Masks()


def scrub(text: str) -> str:
    """Replace every registered secret (in any of its encoded forms) in ``text``; where masks
    overlap, the longest one starting first wins."""
    if not text:
        return text
    _masks.sync()
    return _masks.sub(text)


_URL_QUERY = re.compile(r"(https?://[^\s?#'\"<>]+)[?#][^\s'\"<>]*")
_URL_USERINFO = re.compile(r"(https?://)[^\s/@'\"<>]+@")


def sanitize_message(text: str, limit: int = 300) -> str:
    """An error text made safe to show and store: known secrets scrubbed, URL query strings and
    user info removed, one line, bounded length."""
    text = scrub(str(text))
    text = _URL_QUERY.sub(r"\1?[REDACTED]", text)
    text = _URL_USERINFO.sub(r"\1[REDACTED]@", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
