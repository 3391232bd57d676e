"""The canonical codec: a frozen dataclass is a msgpack array of its fields, in order.

One value has exactly one encoding. Decoding checks arity, types, integer ranges and size caps
field by field, and rejects any bytes that would not re-encode identically, with a
`DecodingError` that names the field (`Block.txs[3].payload.amount`).

Field types are declared with the aliases below (`U64`, `Hash32`, `Bytes(n)`, `Str(n)`,
`Seq(T, n)`), nested wire dataclasses, `T | None`, and tagged unions of wire dataclasses that
each carry a distinct `TAG: ClassVar[int]` (encoded as `[tag, [fields...]]`).
Floats, maps and extension types never appear on the wire.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar, Union

import msgpack

from chain.errors import BlyanError, DecodingError

T = TypeVar("T")

DEFAULT_MAX_SIZE = 16 * 1024 * 1024
"""Largest encoding `decode` accepts unless the caller passes another cap."""


class EncodingError(BlyanError):
    """A value that does not fit its declared wire type (a bug in the caller, not bad input)."""


@dataclass(frozen=True, slots=True)
class IntRange:
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class Length:
    lo: int
    hi: int


U8 = Annotated[int, IntRange(0, 2**8 - 1)]
U16 = Annotated[int, IntRange(0, 2**16 - 1)]
U32 = Annotated[int, IntRange(0, 2**32 - 1)]
U64 = Annotated[int, IntRange(0, 2**64 - 1)]
I64 = Annotated[int, IntRange(-(2**63), 2**63 - 1)]
Hash32 = Annotated[bytes, Length(32, 32)]
PubKey = Annotated[bytes, Length(32, 32)]
Signature = Annotated[bytes, Length(64, 64)]
Address = Annotated[bytes, Length(20, 20)]


def Bytes(max_len: int, min_len: int = 0) -> Any:  # noqa: N802 - reads as a type
    """Variable-length bytes of at most `max_len`."""
    return Annotated[bytes, Length(min_len, max_len)]


def Str(max_len: int, min_len: int = 0) -> Any:  # noqa: N802
    """A UTF-8 string of at most `max_len` bytes."""
    return Annotated[str, Length(min_len, max_len)]


def Seq(elem: Any, max_len: int, min_len: int = 0) -> Any:  # noqa: N802
    """A tuple of at most `max_len` elements of one type."""
    return Annotated[tuple[elem, ...], Length(min_len, max_len)]


def wire(cls: type[T]) -> type[T]:
    """Make `cls` a frozen, slotted dataclass whose schema is checked now, not at first use."""
    cls = dataclass(frozen=True, slots=True)(cls)
    _schema_for(cls)
    return cls


# --- schema nodes ------------------------------------------------------------------------


class _Node:
    __slots__ = ()

    def to_wire(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def from_wire(self, obj: Any, path: str) -> Any:
        raise NotImplementedError


class _Int(_Node):
    __slots__ = ("lo", "hi")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def to_wire(self, value: Any, path: str) -> Any:
        if type(value) is not int or not self.lo <= value <= self.hi:
            raise EncodingError(f"{path}: {value!r} is not an integer in [{self.lo}, {self.hi}]")
        return value

    def from_wire(self, obj: Any, path: str) -> Any:
        if type(obj) is not int:
            raise DecodingError(f"expected integer, got {type(obj).__name__}", path)
        if not self.lo <= obj <= self.hi:
            raise DecodingError(f"integer {obj} outside [{self.lo}, {self.hi}]", path)
        return obj


class _Bool(_Node):
    __slots__ = ()

    def to_wire(self, value: Any, path: str) -> Any:
        if type(value) is not bool:
            raise EncodingError(f"{path}: {value!r} is not a bool")
        return value

    def from_wire(self, obj: Any, path: str) -> Any:
        if type(obj) is not bool:
            raise DecodingError(f"expected bool, got {type(obj).__name__}", path)
        return obj


class _Bytes(_Node):
    __slots__ = ("lo", "hi")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def to_wire(self, value: Any, path: str) -> Any:
        if type(value) is not bytes or not self.lo <= len(value) <= self.hi:
            raise EncodingError(f"{path}: not bytes of length [{self.lo}, {self.hi}]")
        return value

    def from_wire(self, obj: Any, path: str) -> Any:
        if type(obj) is not bytes:
            raise DecodingError(f"expected bytes, got {type(obj).__name__}", path)
        if not self.lo <= len(obj) <= self.hi:
            raise DecodingError(f"length {len(obj)} outside [{self.lo}, {self.hi}]", path)
        return obj


class _Str(_Node):
    __slots__ = ("lo", "hi")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def to_wire(self, value: Any, path: str) -> Any:
        if type(value) is not str or not self.lo <= len(value.encode()) <= self.hi:
            raise EncodingError(f"{path}: not a string of [{self.lo}, {self.hi}] UTF-8 bytes")
        return value

    def from_wire(self, obj: Any, path: str) -> Any:
        if type(obj) is not str:
            raise DecodingError(f"expected string, got {type(obj).__name__}", path)
        n = len(obj.encode())
        if not self.lo <= n <= self.hi:
            raise DecodingError(f"string of {n} bytes outside [{self.lo}, {self.hi}]", path)
        return obj


class _Seq(_Node):
    __slots__ = ("elem", "lo", "hi")

    def __init__(self, elem: _Node, lo: int, hi: int) -> None:
        self.elem, self.lo, self.hi = elem, lo, hi

    def to_wire(self, value: Any, path: str) -> Any:
        if type(value) is not tuple or not self.lo <= len(value) <= self.hi:
            raise EncodingError(f"{path}: not a tuple of [{self.lo}, {self.hi}] items")
        elem = self.elem
        try:
            return [elem.to_wire(v, path) for v in value]
        except EncodingError:
            return [elem.to_wire(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def from_wire(self, obj: Any, path: str) -> Any:
        if type(obj) is not list:
            raise DecodingError(f"expected array, got {type(obj).__name__}", path)
        if not self.lo <= len(obj) <= self.hi:
            raise DecodingError(f"{len(obj)} items outside [{self.lo}, {self.hi}]", path)
        return tuple(self.elem.from_wire(v, f"{path}[{i}]") for i, v in enumerate(obj))


class _Optional(_Node):
    __slots__ = ("inner",)

    def __init__(self, inner: _Node) -> None:
        self.inner = inner

    def to_wire(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.to_wire(value, path)

    def from_wire(self, obj: Any, path: str) -> Any:
        return None if obj is None else self.inner.from_wire(obj, path)


MEMO_ENTRIES = 16_384
"""Wire forms remembered per memoized class (`__wire_memo__ = True`): a transaction is encoded
for its size, its signature, its hash, the block's encoding and the store's index; converting
it once and packing the remembered form saves most of that. Decoded objects of those classes
are remembered by their bytes too (`_DECODED`)."""
MEMO_SMALL_BYTES = 4096
"""Decoded objects of any class are remembered when their bytes are this small: one gossip
message (a status, a small proposal) is decoded by every peer it reaches, and in a simulation
those peers share the process."""


class _Struct(_Node):
    __slots__ = ("cls", "names", "nodes", "memo", "flat")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.names: tuple[str, ...] = ()
        self.nodes: tuple[_Node, ...] = ()
        self.memo: dict[int, tuple[Any, list]] | None = {} if getattr(cls, "__wire_memo__", False) else None
        self.flat: Any = None
        """Its form in one step (`_compile_flat`), or None when a check fails."""

    def to_wire(self, value: Any, path: str) -> Any:
        memo = self.memo
        if memo is not None:
            # By identity, never by equality (1 == True): the entry holds the object, so its id
            # cannot be reused while the entry lives. The form is shared and never mutated.
            hit = memo.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
        if type(value) is not self.cls:
            raise EncodingError(f"{path}: expected {self.cls.__name__}, got {type(value).__name__}")
        form = None
        if self.flat is not None:
            try:
                form = self.flat(value, path)
            except EncodingError:
                form = None  # the walk below raises again, naming the field
        if form is None:
            form = self._walk(value, path)
        if memo is not None:
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[id(value)] = (value, form)
        return form

    def _walk(self, value: Any, path: str) -> list:
        try:  # the fields' paths are spelled out only to name a field in an error
            return [node.to_wire(getattr(value, name), path)
                    for name, node in zip(self.names, self.nodes, strict=True)]
        except EncodingError:
            return [
                node.to_wire(getattr(value, name), f"{path}.{name}")
                for name, node in zip(self.names, self.nodes, strict=True)
            ]

    def from_wire(self, obj: Any, path: str) -> Any:
        if type(obj) is not list:
            raise DecodingError(f"expected array for {self.cls.__name__}, got {type(obj).__name__}", path)
        if len(obj) != len(self.nodes):
            raise DecodingError(
                f"{self.cls.__name__} needs {len(self.nodes)} fields, got {len(obj)}", path
            )
        values = [
            node.from_wire(item, f"{path}.{name}")
            for name, node, item in zip(self.names, self.nodes, obj, strict=True)
        ]
        try:
            return self.cls(*values)
        except (BlyanError, ValueError) as err:  # a __post_init__ check of the class itself
            raise DecodingError(str(err), path) from err


class _Variant(_Node):
    __slots__ = ("by_tag", "by_cls")

    def __init__(self, classes: tuple[type, ...]) -> None:
        self.by_tag: dict[int, _Struct] = {}
        self.by_cls: dict[type, tuple[int, _Struct]] = {}
        for cls in classes:
            tag = getattr(cls, "TAG", None)
            if type(tag) is not int or tag in self.by_tag:
                raise TypeError(f"{cls.__name__} needs a distinct integer TAG in a union")
            struct = _schema_for(cls)
            self.by_tag[tag] = struct
            self.by_cls[cls] = (tag, struct)

    def to_wire(self, value: Any, path: str) -> Any:
        entry = self.by_cls.get(type(value))
        if entry is None:
            raise EncodingError(f"{path}: {type(value).__name__} is not a member of this union")
        tag, struct = entry
        return [tag, struct.to_wire(value, path)]

    def from_wire(self, obj: Any, path: str) -> Any:
        if type(obj) is not list or len(obj) != 2:
            raise DecodingError("expected [tag, fields]", path)
        tag = obj[0]
        struct = self.by_tag.get(tag) if type(tag) is int else None
        if struct is None:
            raise DecodingError(f"unknown tag {tag!r}", path)
        return struct.from_wire(obj[1], f"{path}<{struct.cls.__name__}>")


_SCHEMAS: dict[type, _Struct] = {}


def _schema_for(cls: type) -> _Struct:
    struct = _SCHEMAS.get(cls)
    if struct is not None:
        return struct
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a wire dataclass")
    struct = _Struct(cls)
    _SCHEMAS[cls] = struct  # registered first, so that recursive types terminate
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    struct.names = tuple(f.name for f in fields)
    struct.nodes = tuple(_node_for(hints[f.name], f"{cls.__name__}.{f.name}") for f in fields)
    struct.flat = _compile_flat(struct)
    return struct


def _compile_flat(struct: _Struct) -> Any:
    """A function that returns the struct's wire form after the same checks as its field nodes,
    or None when an integer, bytes or bool field fails one (the generic walk then names the
    field); other fields go through their nodes. Generated source, as `dataclasses` makes
    `__init__`: the walk's call per field costs more than the checks."""
    namespace: dict[str, Any] = {"__builtins__": {"type": type, "len": len, "int": int, "bytes": bytes,
                                                  "bool": bool}}
    lines, checks = [], []
    for i, (name, node) in enumerate(zip(struct.names, struct.nodes, strict=True)):
        if type(node) is _Int:
            checks.append(f"type(v{i}) is int and {node.lo} <= v{i} <= {node.hi}")
        elif type(node) is _Bytes:
            checks.append(f"type(v{i}) is bytes and {node.lo} <= len(v{i}) <= {node.hi}")
        elif type(node) is _Bool:
            checks.append(f"type(v{i}) is bool")
        else:
            namespace[f"n{i}"] = node.to_wire
            lines.append(f"    v{i} = n{i}(value.{name}, path)\n")
            continue
        lines.append(f"    v{i} = value.{name}\n")
    if not lines:
        return None
    values = ", ".join(f"v{i}" for i in range(len(lines)))
    source = "def flat(value, path):\n" + "".join(lines)
    source += f"    if {' and '.join(checks) or 'True'}:\n        return [{values}]\n    return None\n"
    exec(compile(source, f"<codec: {struct.cls.__name__}>", "exec"), namespace)
    return namespace["flat"]


def _node_for(tp: Any, where: str) -> _Node:
    meta = None
    if typing.get_origin(tp) is Annotated:
        tp, *extras = typing.get_args(tp)
        meta = extras[0] if extras else None
    origin = typing.get_origin(tp)
    if tp is bool:
        return _Bool()
    if tp is int:
        if not isinstance(meta, IntRange):
            raise TypeError(f"{where}: integers need a range (use U64, U32, ...)")
        return _Int(meta.lo, meta.hi)
    if tp is bytes:
        if not isinstance(meta, Length):
            raise TypeError(f"{where}: bytes need a length cap (use Hash32, Bytes(n), ...)")
        return _Bytes(meta.lo, meta.hi)
    if tp is str:
        if not isinstance(meta, Length):
            raise TypeError(f"{where}: strings need a length cap (use Str(n))")
        return _Str(meta.lo, meta.hi)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis or not isinstance(meta, Length):
            raise TypeError(f"{where}: sequences are Seq(T, max_len)")
        return _Seq(_node_for(args[0], where + "[]"), meta.lo, meta.hi)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        members = tuple(a for a in args if a is not type(None))
        inner = _node_for(members[0], where) if len(members) == 1 else _Variant(members)
        return _Optional(inner) if len(members) < len(args) else inner
    if dataclasses.is_dataclass(tp):
        return _schema_for(tp)
    raise TypeError(f"{where}: type {tp!r} cannot go on the wire")


# --- public API --------------------------------------------------------------------------


_PACKERS = threading.local()


def _pack(form: Any) -> bytes:
    """The msgpack bytes of a wire form. One Packer per thread: `msgpack.packb` builds a Packer
    and its buffer on every call, which costs more than packing a small record."""
    try:
        packer = _PACKERS.packer
    except AttributeError:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(form)


def to_wire(obj: Any) -> Any:
    """The msgpack-native form of a wire object (lists, ints, bytes, str, bool, None), fresh:
    the caller may change it (internally, remembered forms are shared and never changed)."""
    form = _form_of(obj)
    return msgpack.unpackb(_pack(form), raw=False, use_list=True)


def _form_of(obj: Any) -> Any:
    return _schema_for(type(obj)).to_wire(obj, type(obj).__name__)


def encode(obj: Any) -> bytes:
    """The canonical bytes of a wire object."""
    schema = _schema_for(type(obj))
    if schema.memo is not None:
        hit = _ENCODED.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
    data = _pack(schema.to_wire(obj, type(obj).__name__))
    if schema.memo is not None:
        _remember_encoded(obj, data)
    return data


_ENCODED: dict[int, tuple[Any, bytes]] = {}
"""id(object) -> (the object, its canonical bytes), for memoized classes: by identity, as the
remembered wire forms (a transaction's bytes are wanted for its hash, its signature, the block
and the store's index, without packing it again each time)."""
_HASHED: dict[int, tuple[Any, bytes]] = {}
"""id(object) -> (the object, SHA-256 of its canonical bytes), for memoized classes."""


def _remember_encoded(obj: Any, data: bytes) -> None:
    if len(_ENCODED) >= MEMO_ENTRIES:
        _ENCODED.clear()
    _ENCODED[id(obj)] = (obj, data)
    _remember_decoded(type(obj), data, obj)


_DECODED: dict[tuple[type, bytes], Any] = {}
"""(class, canonical bytes) -> the object, for memoized classes: a state record written by one
transaction and read by the next is not decoded again. Objects are immutable and decoding is a
pure function of the bytes, so sharing one is the same as decoding anew."""


def _remember_decoded(cls: type, data: bytes, obj: Any) -> None:
    if len(_DECODED) >= MEMO_ENTRIES:
        _DECODED.clear()
    _DECODED[(cls, data)] = obj


def clear_memos() -> None:
    """Forget every remembered wire form (benchmarks measuring cold imports)."""
    for struct in _SCHEMAS.values():
        if struct.memo is not None:
            struct.memo.clear()
    _DECODED.clear()
    _ENCODED.clear()
    _HASHED.clear()


def encode_with_field(obj: Any, name: str) -> tuple[bytes, bytes]:
    """The canonical bytes of `obj` and of its field `name`, from one conversion (a transaction
    and its signed body: the costly part of encoding is the conversion, not the packing)."""
    schema = _schema_for(type(obj))
    form = schema.to_wire(obj, type(obj).__name__)
    part = form[schema.names.index(name)]
    data = _pack(form)
    if schema.memo is not None:
        _remember_encoded(obj, data)
    return data, _pack(part)


def compute_array_header_size(n: int) -> int:
    """Bytes msgpack spends on the header of an array of `n` items (the rest is the items)."""
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def decode(cls: type[T], data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> T:
    """Decode canonical bytes into `cls`, or raise `DecodingError` naming the field."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) > max_size:
        raise DecodingError(f"{len(data)} bytes exceed the cap of {max_size}", cls.__name__)
    schema = _schema_for(cls)
    memoize = schema.memo is not None or len(data) <= MEMO_SMALL_BYTES
    if memoize:
        known = _DECODED.get((cls, data))
        if known is not None:
            return known
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as err:  # msgpack raises many unrelated types for garbage
        raise DecodingError(f"malformed msgpack: {err.__class__.__name__}", cls.__name__) from err
    value = schema.from_wire(raw, cls.__name__)
    if _pack(raw) != data:
        raise DecodingError("non-canonical encoding", cls.__name__)
    if memoize:
        _remember_decoded(cls, data, value)
    return value


def from_wire(cls: type[T], raw: Any, path: str = "") -> T:
    """Validate an already-unpacked msgpack value as `cls` (used by nested containers)."""
    return _schema_for(cls).from_wire(raw, path or cls.__name__)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash_of(obj: Any) -> bytes:
    """SHA-256 of the canonical encoding: the id of any wire object."""
    hit = _HASHED.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    digest = hashlib.sha256(encode(obj)).digest()
    if _schema_for(type(obj)).memo is not None:
        if len(_HASHED) >= MEMO_ENTRIES:
            _HASHED.clear()
        _HASHED[id(obj)] = (obj, digest)
    return digest


__all__ = [
    "Address", "Bytes", "ClassVar", "DecodingError", "EncodingError", "Hash32", "I64",
    "PubKey", "Seq", "Signature", "Str", "U8", "U16", "U32", "U64", "clear_memos", "compute_array_header_size",
    "decode", "encode",
    "encode_with_field",
    "from_wire", "hash_of", "sha256", "to_wire", "wire",
]
