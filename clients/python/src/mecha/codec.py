"""The payload encoding of SPEC §4, and nothing else.

The wire format carries no self-description, so the reader must know the type. Here
the type *is* the Python annotation: a dataclass's fields, in declaration order, are
its wire fields, and the few wire types Python cannot express directly are spelled
with ``Annotated`` markers (``U8`` … ``U64`` for fixed-width integers, ``Variants``
for an enum whose variants carry fields). Every type is compiled once into a pair of
closures, so a call pays for no reflection.

Decoding is strict, as §4 demands of every decoder: the payload must be consumed
exactly, a length or count is checked against the bytes remaining *before* anything
is built from it (so a hostile 2^62 prefix costs nothing), and invalid UTF-8, a bool
byte other than 0/1, an Option tag other than 0/1 and an undefined enum index are all
errors.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args, get_origin

__all__ = [
    "U8", "U16", "U32", "U64", "Variants",
    "DecodeError", "EncodeError", "encode", "decode",
]


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the expected type (SPEC §4, §6.7)."""


class EncodeError(ValueError):
    """A Python value that cannot be encoded as its wire type (e.g. -1 as a u64)."""


U8 = Annotated[int, 1]
U16 = Annotated[int, 2]
U32 = Annotated[int, 4]
U64 = Annotated[int, 8]


class Variants:
    """Marks ``Annotated[Union[A, B], Variants]``: a §4 enum whose variant *i* carries
    the fields of the *i*-th union member (e.g. ``TxOp``). The Python value is simply
    an instance of one member; its position in the union is the u32 index."""


class _Reader:
    """A cursor over one payload. ``take`` is the single place that checks bounds."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> bytes:
        if n > len(self.buf) - self.pos:
            raise DecodeError(f"needs {n} bytes at offset {self.pos}, {self.remaining()} remain")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def length(self) -> int:
        return int.from_bytes(self.take(8), "little")


Enc = Callable[[Any, bytearray], None]
Dec = Callable[[_Reader], Any]
_cache: dict[Any, tuple[Enc, Dec, int]] = {}


def encode(value: Any, tp: Any = None) -> bytes:
    """Encode ``value`` as ``tp`` (default: its own dataclass type)."""
    enc = _compile(type(value) if tp is None else tp)[0]
    out = bytearray()
    try:
        enc(value, out)
    except (OverflowError, UnicodeEncodeError, AttributeError, TypeError, ValueError) as e:
        raise EncodeError(f"cannot encode {value!r}: {e}") from e
    return bytes(out)


def decode(tp: Any, data: bytes) -> Any:
    """Decode exactly one ``tp`` from ``data``; anything left over is an error."""
    r = _Reader(bytes(data))
    value = _compile(tp)[1](r)
    if r.remaining():
        raise DecodeError(f"{r.remaining()} trailing bytes after the value")
    return value


def _compile(tp: Any) -> tuple[Enc, Dec, int]:
    """Returns (encoder, decoder, minimum encoded size) for a type, memoised."""
    try:
        return _cache[tp]
    except (KeyError, TypeError):
        pass
    built = _build(tp)
    try:
        _cache[tp] = built
    except TypeError:  # an unhashable annotation: just don't memoise it
        pass
    return built


def _uint(n: int) -> tuple[Enc, Dec, int]:
    def enc(v: int, out: bytearray) -> None:
        if type(v) is bool or not isinstance(v, int):
            raise TypeError(f"expected an int, got {type(v).__name__}")
        out += v.to_bytes(n, "little")  # OverflowError for negatives and too-large values
    return enc, lambda r: int.from_bytes(r.take(n), "little"), n


def _enc_bool(v: bool, out: bytearray) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"expected a bool, got {type(v).__name__}")
    out.append(1 if v else 0)


def _dec_bool(r: _Reader) -> bool:
    b = r.take(1)[0]
    if b > 1:
        raise DecodeError(f"invalid bool byte {b:#04x}")
    return b == 1


def _enc_bytes(v: bytes, out: bytearray) -> None:
    if not isinstance(v, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(v).__name__}")
    out += len(v).to_bytes(8, "little")
    out += v


def _dec_bytes(r: _Reader) -> bytes:
    return r.take(r.length())


def _enc_str(v: str, out: bytearray) -> None:
    if not isinstance(v, str):
        raise TypeError(f"expected str, got {type(v).__name__}")
    _enc_bytes(v.encode("utf-8"), out)  # lone surrogates raise UnicodeEncodeError


def _dec_str(r: _Reader) -> str:
    raw = _dec_bytes(r)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"invalid UTF-8: {e}") from None


def _build(tp: Any) -> tuple[Enc, Dec, int]:
    if tp is bool:
        return _enc_bool, _dec_bool, 1
    if tp is bytes:
        return _enc_bytes, _dec_bytes, 8
    if tp is str:
        return _enc_str, _dec_str, 8
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        base, marker = args[0], args[1]
        if base is int and marker in (1, 2, 4, 8):
            return _uint(marker)
        if marker is Variants:
            return _variants(get_args(base))
    if origin is list:
        return _vec(args[0])
    if origin is tuple:
        return _tuple(args)
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return _option(args[0] if args[1] is type(None) else args[1])
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return _unit_enum(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _struct(tp)
    raise TypeError(f"no wire encoding for {tp!r}")


def _vec(item: Any) -> tuple[Enc, Dec, int]:
    ienc, idec, imin = _compile(item)

    def enc(v: list[Any], out: bytearray) -> None:
        out += len(v).to_bytes(8, "little")
        for x in v:
            ienc(x, out)

    def dec(r: _Reader) -> list[Any]:
        n = r.length()
        if n * imin > r.remaining():  # §4 "hostile lengths": check before looping
            raise DecodeError(f"count {n} needs at least {n * imin} bytes, {r.remaining()} remain")
        return [idec(r) for _ in range(n)]
    return enc, dec, 8


def _tuple(items: tuple[Any, ...]) -> tuple[Enc, Dec, int]:
    parts = [_compile(t) for t in items]

    def enc(v: tuple[Any, ...], out: bytearray) -> None:
        for (e, _, _), x in zip(parts, v, strict=True):  # ValueError on a wrong length
            e(x, out)
    return enc, lambda r: tuple(d(r) for _, d, _ in parts), sum(m for _, _, m in parts)


def _option(inner: Any) -> tuple[Enc, Dec, int]:
    ienc, idec, _ = _compile(inner)

    def enc(v: Any, out: bytearray) -> None:
        if v is None:
            out.append(0)
        else:
            out.append(1)
            ienc(v, out)

    def dec(r: _Reader) -> Any:
        tag = r.take(1)[0]
        if tag > 1:
            raise DecodeError(f"invalid Option tag {tag:#04x}")
        return idec(r) if tag else None
    return enc, dec, 1


def _index(r: _Reader, count: int, name: str) -> int:
    i = int.from_bytes(r.take(4), "little")
    if i >= count:
        raise DecodeError(f"undefined {name} variant index {i}")
    return i


def _unit_enum(cls: type[enum.IntEnum]) -> tuple[Enc, Dec, int]:
    members = list(cls)
    assert [m.value for m in members] == list(range(len(members))), "variant i must be value i"

    def enc(v: enum.IntEnum, out: bytearray) -> None:
        out += cls(v).value.to_bytes(4, "little")
    return enc, lambda r: members[_index(r, len(members), cls.__name__)], 4


def _variants(members: tuple[type, ...]) -> tuple[Enc, Dec, int]:
    coders = [_compile(m) for m in members]

    def enc(v: Any, out: bytearray) -> None:
        i = members.index(type(v))  # ValueError if not a member: a caller bug
        out += i.to_bytes(4, "little")
        coders[i][0](v, out)

    def dec(r: _Reader) -> Any:
        return coders[_index(r, len(members), "enum")][1](r)
    return enc, dec, 4 + min(m for _, _, m in coders)


def _struct(cls: type) -> tuple[Enc, Dec, int]:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    fields = [(n, *_compile(hints[n])) for n in names]

    def enc(v: Any, out: bytearray) -> None:
        if type(v) is not cls:
            raise TypeError(f"expected {cls.__name__}, got {type(v).__name__}")
        for name, e, _, _ in fields:
            e(getattr(v, name), out)

    def dec(r: _Reader) -> Any:
        return cls(*[d(r) for _, _, d, _ in fields])
    return enc, dec, sum(m for _, _, _, m in fields)
