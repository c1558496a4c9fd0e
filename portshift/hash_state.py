"""SHA-256 and MD5 whose state can be saved at a block boundary and taken up in another process.

Python's :mod:`hashlib` cannot save a hash's state, and resuming a big upload after a crash needs
the whole-file SHA-256 (and, for stores that check one, the whole-file MD5) of the bytes already
stored without reading them again. OpenSSL's ``SHA256_CTX`` and ``MD5_CTX`` are public structures
(``openssl/sha.h``: ``h[8]``, ``Nl``, ``Nh``, the block being filled, ``num``, ``md_len``;
``openssl/md5.h``: ``A``-``D``, ``Nl``, ``Nh``, the block, ``num``) whose layout has not changed
since OpenSSL 0.9; at a 64-byte boundary the block is empty, so the state is the chaining words and
the bit count (40 bytes for SHA-256, 24 for MD5): a digest of the prefix, not the prefix (the
compression functions cannot be run backwards).

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

_BLOCK = 64


class _Algorithm:
    """One OpenSSL digest driven through its low-level ``<NAME>_Init/_Update/_Final`` calls."""

    def __init__(self, name: str, symbol: str, ctx_size: int, saved: int, digest_size: int) -> None:
        self.name, self.symbol = name, symbol
        self.ctx_size = ctx_size  #: sizeof(<NAME>_CTX)
        self.saved = saved  #: bytes of the context that are the state at a block boundary
        self.digest_size = digest_size
        self.prefix = f"{name}-v1:"  #: the prefix of an exported state: the format


#: SHA256_CTX: 8 + 2 + 16 + 2 words; saved: h[8], Nl, Nh.  MD5_CTX: 4 + 2 + 16 + 1; saved: A-D, Nl, Nh.
SHA256 = _Algorithm("sha256", "SHA256", 112, 40, 32)
MD5 = _Algorithm("md5", "MD5", 92, 24, 16)


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
        for algo in (SHA256, MD5):
            for call in ("Init", "Update", "Final"):
                getattr(lib, f"{algo.symbol}_{call}").restype = ctypes.c_int
            getattr(lib, f"{algo.symbol}_Init").argtypes = [ctypes.c_void_p]
            getattr(lib, f"{algo.symbol}_Update").argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            getattr(lib, f"{algo.symbol}_Final").argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lib if all(_self_test(lib, algo) for algo in (SHA256, MD5)) else None


def _self_test(lib: ctypes.CDLL, algo: _Algorithm) -> bool:
    """Hash, save, restore in a fresh context, hash on: the digests must be hashlib's."""
    try:
        data = bytes(range(256)) * 40 + b"portshift"
        one = SavedHash(lib, algo)
        one.update(data[: _BLOCK * 3])
        two = SavedHash.restore(lib, one.export())
        two.update(data[_BLOCK * 3 :])
        one.update(memoryview(data)[_BLOCK * 3 :])
        want = hashlib.new(algo.name, data).digest()
        return one.digest() == want and two.digest() == want and one.digest() == want
    except Exception:  # noqa: BLE001 - any surprise means: do not use it
        return False


def available() -> bool:
    """Whether saveable SHA-256 and MD5 work in this process."""
    return _lib() is not None


def new(algorithm: str = "sha256") -> SavedHash | None:
    """A fresh saveable hash (``"sha256"`` or ``"md5"``), or ``None`` when this process has none
    (see :func:`available`)."""
    lib = _lib()
    return SavedHash(lib, _ALGORITHMS[algorithm]) if lib is not None else None


def restore(state: str) -> SavedHash:
    """The hash saved as ``state`` by :meth:`SavedHash.export`. Raises ``ValueError`` when the
    text is not such a state, ``RuntimeError`` when this process cannot continue it."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("this Python's OpenSSL offers no saveable hash")
    return SavedHash.restore(lib, state)


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


class SavedHash:
    """``hashlib``'s ``update``/``digest``/``hexdigest``/``copy``, plus :meth:`export`."""

    block_size = _BLOCK

    def __init__(self, lib: ctypes.CDLL, algo: _Algorithm, ctx: ctypes.Array[ctypes.c_char] | None = None) -> None:
        self._lib, self._algo = lib, algo
        self.name, self.digest_size = algo.name, algo.digest_size
        self._update = getattr(lib, f"{algo.symbol}_Update")
        if ctx is None:
            ctx = ctypes.create_string_buffer(algo.ctx_size)
            if getattr(lib, f"{algo.symbol}_Init")(ctx) != 1:
                raise RuntimeError(f"{algo.symbol}_Init failed")
        self._ctx = ctx
        self.length = 0  #: bytes hashed so far

    @classmethod
    def restore(cls, lib: ctypes.CDLL, state: str) -> SavedHash:
        name, _, _ = state.partition("-v1:")
        algo = _ALGORITHMS.get(name)
        if algo is None or not state.startswith(algo.prefix):
            raise ValueError("not a saved hash state")
        try:
            raw = bytes.fromhex(state[len(algo.prefix) :])
        except ValueError:
            raise ValueError("not a saved hash state") from None
        if len(raw) != algo.saved:
            raise ValueError("not a saved hash state")
        hasher = cls(lib, algo)  # initialised: an empty block
        ctypes.memmove(hasher._ctx, raw, algo.saved)
        low = int.from_bytes(raw[algo.saved - 8 : algo.saved - 4], sys.byteorder)
        high = int.from_bytes(raw[algo.saved - 4 :], sys.byteorder)
        hasher.length = ((high << 32) | low) // 8
        return hasher

    def update(self, data: bytes | bytearray | memoryview) -> None:
        with _Buffer(data) as (address, n):
            if n:
                # ctypes releases the GIL for the call: a big update does not hold up other threads
                self._update(self._ctx, address, n)
                self.length += n

    def export(self) -> str:
        """The state as text; only at a 64-byte boundary (where the block being filled is empty)."""
        if self.length % _BLOCK:
            raise ValueError(f"a hash state can be saved only at a multiple of {_BLOCK} bytes")
        return self._algo.prefix + self._ctx.raw[: self._algo.saved].hex()

    def copy(self) -> SavedHash:
        ctx = ctypes.create_string_buffer(self._algo.ctx_size)
        ctypes.memmove(ctx, self._ctx, self._algo.ctx_size)
        other = SavedHash(self._lib, self._algo, ctx)
        other.length = self.length
        return other

    def digest(self) -> bytes:
        out = ctypes.create_string_buffer(self.digest_size)
        if getattr(self._lib, f"{self._algo.symbol}_Final")(out, self.copy()._ctx) != 1:
            raise RuntimeError(f"{self._algo.symbol}_Final failed")
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()


_ALGORITHMS = {a.name: a for a in (SHA256, MD5)}
