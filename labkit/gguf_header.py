"""A GGUF file's header: its metadata and tensor table, read without touching the weights.

``gguf.GGUFReader`` builds numpy views of every field, the whole vocabulary included, and
importing ``gguf`` pulls in mistral_common and jsonschema: about 4 s on 2 cores for a 135M
model, paid by every plan, every model check and every ``labkit fit``. Planning needs a few
numbers and the tensor table, so this reads the header with ``struct`` and keeps large arrays
(vocabulary, merges, scores) as their length unless asked for by name.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3).
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

__all__ = ["GGUFHeader", "GGUFTensor", "ArrayInfo", "GGML_TYPES", "GGML_SIZES", "FILE_TYPES", "ggml_type", "read_header"]

# value type -> struct format (scalars); 8 = string, 9 = array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 64  # arrays up to this length are always decoded (e.g. per-layer head counts)

# ggml type id -> (name, elements per block, bytes per block), as in gguf.constants (kept here
# so that planning does not import gguf); an id missing here is looked up there.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4),
    27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

# general.file_type -> llama.cpp's name for it (gguf.LlamaFileType without MOSTLY_/ALL_)
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
    40: "Q1_0",
}

# name -> (elements per block, bytes per block), for sizing tensors by type name
GGML_SIZES: dict[str, tuple[int, int]] = {name: (block, size) for name, block, size in GGML_TYPES.values()}


def ggml_type(type_id: int) -> tuple[str, int, int]:
    """(name, block elements, block bytes) of a ggml type id."""
    if type_id in GGML_TYPES:
        return GGML_TYPES[type_id]
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        t = GGMLQuantizationType(type_id)
    except ValueError:
        raise ModelError(f"unknown ggml tensor type {type_id}: the file is newer than the "
                         "installed gguf package, or damaged") from None
    return (t.name, *GGML_QUANT_SIZES[t])


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array left undecoded: its element type and length."""

    type: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: the contiguous dimension first
    type_name: str  # ggml type, e.g. "Q4_K"
    offset: int  # absolute position of the data in the file

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        from .planner import tensor_bytes

        return tensor_bytes(self.shape, self.type_name)


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))

    def arch_get(self, key: str, default: Any = None) -> Any:
        """``{architecture}.{key}``, e.g. ``arch_get("block_count")``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def file_type(self) -> str | None:
        """The quantization the file was made as (general.file_type), e.g. "Q4_K_M"."""
        ft = self.metadata.get("general.file_type")
        return None if ft is None else FILE_TYPES.get(int(ft), f"type {ft}")

    @property
    def data_end(self) -> int:
        """Where the last tensor's data ends: a complete file is at least this long."""
        return max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        raw = self.buf[self.pos:self.pos + n]
        if len(raw) != n:
            raise ValueError("a string runs past the end of the file")
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def value(self, vtype: int, decode: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown metadata value type {vtype}")
        etype, n = self.unpack("I"), self.unpack("Q")
        # per-layer numbers (head counts, sliding-window flags) are read; a vocabulary is not
        if decode or n <= _SMALL_ARRAY or (etype in _SCALARS and n <= 4096):
            return [self.value(etype, True) for _ in range(n)]
        if etype in _SCALARS:
            self.pos += n * struct.calcsize(_SCALARS[etype])
        else:  # strings (vocabulary, merges): walk their lengths only
            for _ in range(n):
                self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
        return ArrayInfo(etype, n)


def read_header(path: str | Path, decode: Iterable[str] = ()) -> GGUFHeader:
    """The metadata and tensor table of the GGUF at ``path``. Arrays longer than 64 items are
    kept as :class:`ArrayInfo` unless their key is in ``decode``.

    Raises ModelError for a file that is not GGUF or whose header is cut short.
    """
    path = Path(path)
    wanted = set(decode)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, _Cursor(buf), wanted)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        # ValueError: mmap of an empty file; struct.error: a header cut short
        raise ModelError(f"{path} is not a readable GGUF file ({e}). Download it again.") from e


def _parse(path: Path, c: _Cursor, wanted: set[str]) -> GGUFHeader:
    if bytes(c.buf[:4]) != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (it starts with {bytes(c.buf[:4])!r}).")
    c.pos = 4
    header = GGUFHeader(path, c.unpack("I"))
    n_tensors, n_kv = c.unpack("Q"), c.unpack("Q")
    for _ in range(n_kv):
        key = c.string()
        header.metadata[key] = c.value(c.unpack("I"), key in wanted)
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        shape = tuple(c.unpack("Q") for _ in range(c.unpack("I")))
        infos.append((name, shape, ggml_type(c.unpack("I"))[0], c.unpack("Q")))
    align = int(header.metadata.get("general.alignment", 32))
    if align <= 0:
        raise ValueError(f"its general.alignment is {align}")
    start = -(-c.pos // align) * align
    header.tensors = [GGUFTensor(n, s, t, start + off) for n, s, t, off in infos]
    return header
