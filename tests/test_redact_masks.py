"""The scrubber's mask index (a radix tree, no recompiled regex): it hides exactly what one
longest-first alternation of every mask hides, keeps up with masks registered and forgotten
in any order (also from several threads), drops the nodes of forgotten masks, and warns once
when a plugin piles up masks without forgetting them."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portshift import redact
from portshift.redact import REDACTED, scrub
from portshift.secrets import forget_mask, known_masks, register_mask


def reference(text: str) -> str:
    """What scrub() did before: one alternation of every mask, longest first."""
    masks = sorted(known_masks(), key=len, reverse=True)
    if not masks:
        return text
    return re.compile("|".join(map(re.escape, masks))).sub(REDACTED, text)


ALPHABET = "ab/=%-xy"  # few letters: masks overlap, nest and share prefixes


@settings(max_examples=150, deadline=None)
@given(
    masks=st.lists(st.text(ALPHABET, min_size=4, max_size=12), min_size=1, max_size=12),
    forget=st.lists(st.integers(0, 11), max_size=6),
    text=st.text(ALPHABET + " Q", max_size=120),
)
def test_scrub_hides_what_a_longest_first_alternation_hides(masks: list[str], forget: list[int], text: str) -> None:
    tag = "T" + secrets.token_hex(4)  # keep these masks apart from other tests' masks
    masks = [tag + m for m in masks]
    text = text.replace("Q", tag)
    try:
        for m in masks:
            register_mask(m)
        assert scrub(text) == reference(text)
        for i in forget:
            if i < len(masks):
                forget_mask(masks[i])
        assert scrub(text) == reference(text)
    finally:
        for m in masks:
            forget_mask(m)


def test_masks_registered_and_forgotten_by_thousands_leave_no_nodes_and_stay_exact() -> None:
    before = len(redact._masks.root.edges)
    links = [f"https://media.example/{secrets.token_hex(16)}?sig={secrets.token_hex(32)}" for _ in range(3000)]
    for link in links:
        register_mask(link)
    line = f"a line with {links[1234]} and {links[7]} in it"
    assert scrub(line) == f"a line with {REDACTED} and {REDACTED} in it"
    for link in links[:2999]:
        forget_mask(link)
    assert scrub(line) == line  # forgotten: no longer hidden
    assert scrub(f"x{links[2999]}y") == f"x{REDACTED}y"
    forget_mask(links[2999])
    scrub("sync")
    assert len(redact._masks.root.edges) <= before + 1  # only shared first characters may stay
    assert not any(link in redact._masks.mirror for link in links)


def test_a_mask_registered_in_another_thread_is_hidden_by_the_next_scrub() -> None:
    stop = threading.Event()
    errors: list[str] = []

    def churn() -> None:  # a plugin registering and forgetting links all the time
        while not stop.is_set():
            link = "churn-" + secrets.token_hex(20)
            register_mask(link)
            scrub("x")
            forget_mask(link)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            value = "steady-" + secrets.token_hex(20)
            register_mask(value)
            if value in scrub(f"<{value}>"):
                errors.append(value)
            forget_mask(value)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []


def test_piling_up_masks_warns_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="portshift.redact")
    scrub("sync")
    monkeypatch.setattr(redact._Masks, "WARN_AT", len(known_masks()) + 50)
    pile = ["pile-" + secrets.token_hex(12) for _ in range(60)]  # 60 values, 2-3 forms each
    try:
        for value in pile:
            register_mask(value)
            scrub("a log line")
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        warnings = [r for r in caplog.records if "secret masks are registered" in r.getMessage()]
        assert len(warnings) == 1
        assert "forget_mask" in warnings[0].getMessage()
        assert not any(value in warnings[0].getMessage() for value in pile)
    finally:
        for value in pile:
            forget_mask(value)
        scrub("sync")


def test_a_mask_is_encoded_when_the_scrubber_needs_it_and_never_if_forgotten_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import urllib.parse

    from portshift import secrets as secrets_module

    encoded: list[str] = []
    variants = secrets_module._variants
    monkeypatch.setattr(secrets_module, "_variants", lambda v: encoded.append(v) or variants(v))
    link = f"https://media.example/{secrets.token_hex(16)}?sig={secrets.token_hex(32)}"
    register_mask(link)
    forget_mask(link)  # a download that logged nothing: its link is never encoded
    assert encoded == [] and link not in known_masks()
    value = "sig/" + secrets.token_hex(24) + "+="
    register_mask(value)
    assert encoded == []
    b64 = base64.b64encode(value.encode()).decode().rstrip("=")
    line = f"a {urllib.parse.quote(value, safe='')} b {b64} c"
    assert scrub(line) == f"a {REDACTED} b {REDACTED} c"  # every form hidden at the first line
    assert encoded == [value]
    forget_mask(value)
    assert scrub(line) == line
    register_mask(value)  # registered again: hidden again
    assert scrub(line) == f"a {REDACTED} b {REDACTED} c"
    forget_mask(value)
