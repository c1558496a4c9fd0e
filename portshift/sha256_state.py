"""A SHA-256 whose state can be saved at a block boundary and taken up again in another process.

Python's :mod:`hashlib` cannot save a hash's state, and resuming a big upload after a crash needs
the whole-file SHA-256 of the bytes already stored without reading them again. OpenSSL's
``SHA256_CTX`` is a public structure (``openssl/sha.h``: ``h[8]``, ``Nl``, ``Nh``, the block being
filled, ``num``, ``md_len``) whose layout has not changed since OpenSSL 0.9; at a 64-byte boundary
the block is empty, so the state is the eight chaining words and the bit count: 40 bytes, a digest
of the prefix (not the prefix: SHA-256's compression function cannot be run backwards).

This module drives that structure through :mod:`ctypes`, on the same ``libcrypto`` that Python's
``_hashlib`` loaded (the OpenSSL the interpreter already trusts; its assembly uses SHA-NI where the
CPU has it, as :mod:`hashlib` does). A self-test runs once: when it fails, or when no libcrypto
with ``SHA256_Init`` is found, :func:`available` is ``False`` and uploads start over after a crash
instead of resuming (the export is still complete, only slower).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sys
from functools import lru_cache

_CTX_SIZE = 112  #: sizeof(SHA256_CTX): 8 + 2 + 16 + 2 unsigned 32-bit words
_SAVED = 40  #: h[8], Nl, Nh: what a state at a block boundary is
_BLOCK = 64
#: the prefix of an exported state: the format (a later one may change it)
_PREFIX = "sha256-v1:"


def _libcrypto_path() -> str | None:
    """The libcrypto that ``_hashlib`` loaded (Linux: from the process's maps), else the system's."""
    import _hashlib  # noqa: F401 - loads libcrypto into the process

    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    path = line.rstrip("\n").split(" ", 5)[-1].strip()
                    if "/libcrypto" in path and path.startswith("/"):
                        return path
        except OSError:
            pass
        return ctypes.util.find_library("crypto")
    # elsewhere only the library _hashlib names is safe to load (macOS aborts on a system libcrypto)
    return None


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    path = _libcrypto_path()
    if not path:
        return None
    try:
        lib = ctypes.CDLL(path)
        for name in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
            getattr(lib, name).restype = ctypes.c_int
        lib.SHA256_Init.argtypes = [ctypes.c_void_p]
        lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lib if _self_test(lib) else None


def _self_test(lib: ctypes.CDLL) -> bool:
    """Hash, save, restore in a fresh context, hash on: the digests must be hashlib's."""
    try:
        data = bytes(range(256)) * 40 + b"portshift"
        one = _Sha256(lib)
        one.update(data[: _BLOCK * 3])
        two = _Sha256.restore(lib, one.export())
        two.update(data[_BLOCK * 3 :])
        one.update(memoryview(data)[_BLOCK * 3 :])
        want = hashlib.sha256(data).digest()
        return one.digest() == want and two.digest() == want and one.digest() == want
    except Exception:  # noqa: BLE001 - any surprise means: do not use it
        return False


def available() -> bool:
    """Whether a saveable SHA-256 works in this process."""
    return _lib() is not None


def new() -> _Sha256 | None:
    """A fresh saveable SHA-256, or ``None`` when this process has none (see :func:`available`)."""
    lib = _lib()
    return _Sha256(lib) if lib is not None else None


def restore(state: str) -> _Sha256:
    """The SHA-256 saved as ``state`` by :meth:`_Sha256.export`. Raises ``ValueError`` when the text
    is not such a state, ``RuntimeError`` when this process cannot continue it."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("this Python's OpenSSL offers no saveable SHA-256")
    return _Sha256.restore(lib, state)


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (public, unchanged since 3.3): a read-only buffer's address."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PYBUF_SIMPLE = 0  # contiguous bytes, read-only allowed


class _Buffer:
    """The address and length of any contiguous buffer (bytes, bytearray, a read-only view)
    without a copy, held for the ``with`` block."""

    def __init__(self, data: object) -> None:
        self._data = data
        self._view = _PyBuffer()

    def __enter__(self) -> tuple[int, int]:
        if _get_buffer(self._data, ctypes.byref(self._view), _PYBUF_SIMPLE) != 0:
            raise BufferError("not a contiguous buffer")
        return self._view.buf or 0, self._view.len

    def __exit__(self, *exc: object) -> None:
        _release_buffer(ctypes.byref(self._view))


class _Sha256:
    """``hashlib.sha256``'s ``update``/``digest``/``hexdigest``/``copy``, plus :meth:`export`."""

    name = "sha256"
    digest_size = 32
    block_size = _BLOCK

    def __init__(self, lib: ctypes.CDLL, ctx: ctypes.Array[ctypes.c_char] | None = None) -> None:
        self._lib = lib
        if ctx is None:
            ctx = ctypes.create_string_buffer(_CTX_SIZE)
            if lib.SHA256_Init(ctx) != 1:
                raise RuntimeError("SHA256_Init failed")
        self._ctx = ctx
        self.length = 0  #: bytes hashed so far

    @classmethod
    def restore(cls, lib: ctypes.CDLL, state: str) -> _Sha256:
        if not state.startswith(_PREFIX):
            raise ValueError("not a saved SHA-256 state")
        try:
            raw = bytes.fromhex(state[len(_PREFIX) :])
        except ValueError:
            raise ValueError("not a saved SHA-256 state") from None
        if len(raw) != _SAVED:
            raise ValueError("not a saved SHA-256 state")
        hasher = cls(lib)  # initialised: num = 0, md_len = 32
        ctypes.memmove(hasher._ctx, raw, _SAVED)
        low = int.from_bytes(raw[32:36], sys.byteorder)
        high = int.from_bytes(raw[36:40], sys.byteorder)
        hasher.length = ((high << 32) | low) // 8
        return hasher

    def update(self, data: bytes | bytearray | memoryview) -> None:
        with _Buffer(data) as (address, n):
            if n:
                # ctypes releases the GIL for the call: a big update does not hold up other threads
                self._lib.SHA256_Update(self._ctx, address, n)
                self.length += n

    def export(self) -> str:
        """The state as text; only at a 64-byte boundary (where the block being filled is empty)."""
        if self.length % _BLOCK:
            raise ValueError(f"a SHA-256 state can be saved only at a multiple of {_BLOCK} bytes")
        return _PREFIX + self._ctx.raw[:_SAVED].hex()

    def copy(self) -> _Sha256:
        ctx = ctypes.create_string_buffer(_CTX_SIZE)
        ctypes.memmove(ctx, self._ctx, _CTX_SIZE)
        other = _Sha256(self._lib, ctx)
        other.length = self.length
        return other

    def digest(self) -> bytes:
        out = ctypes.create_string_buffer(32)
        if self._lib.SHA256_Final(out, self.copy()._ctx) != 1:
            raise RuntimeError("SHA256_Final failed")
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()
