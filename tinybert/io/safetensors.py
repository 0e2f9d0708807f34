"""safetensors files, read with every size checked before anything is allocated.

The format (https://github.com/huggingface/safetensors) is three parts, and no code runs to read it
(unlike a pickle)::

    N         8 bytes, little-endian unsigned: the length of the header
    header    N bytes of JSON: {name: {"dtype": "F32", "shape": [768, 384], "data_offsets": [b, e]}, ...}
    data      the tensors' bytes, little-endian; tensor ``name`` is data[b:e]

``read_header`` reads the first two parts only and refuses, naming the file and the tensor, a header
that promises more than the file holds: a header length beyond the file, a tensor whose bytes lie
past its end, a byte count that is not shape × item size, overlapping tensors, an unknown dtype. So
the shapes and dtypes of every tensor are known, and trustworthy, before one byte of data is read;
``read_tensor`` then reads exactly one tensor's bytes. Writing goes through the safetensors package.
"""
from __future__ import annotations

import errno
import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from tinybert.errors import CheckpointError, MissingFile

# safetensors dtype -> NumPy dtype (little-endian); BF16 has no NumPy dtype (None: refused with a hint)
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": None, "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
              "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 100_000_000        # the limit the safetensors library itself enforces


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it (no data read)."""
    file: str
    name: str
    dtype: str            # safetensors' name: "F32", "F16", ...
    shape: tuple
    start: int            # absolute byte offset in the file
    nbytes: int

    @property
    def numpy_dtype(self):
        """The NumPy dtype, or None for BF16 (which NumPy lacks)."""
        return None if DTYPES[self.dtype] is None else np.dtype(DTYPES[self.dtype])


def _unreadable(file: str, why: str) -> CheckpointError:
    return CheckpointError(f"{file} is not a readable safetensors file (truncated or corrupt?): {why}")


def _require_file(file: str) -> None:
    if not os.path.isfile(file):
        bin_file = os.path.join(os.path.dirname(file), "pytorch_model.bin")
        hint = (f"; {bin_file} exists but is a pickle, which tinybert never loads — convert it once "
                "with transformers: AutoModel.from_pretrained(p).save_pretrained(p, safe_serialization=True)"
                if os.path.isfile(bin_file) else "")
        raise MissingFile(f"weights file not found: {file}{hint}")


def read_header(file) -> dict[str, TensorInfo]:
    """``{name: TensorInfo}`` from a .safetensors file's header, every offset checked against the
    file's size. Reads at most the header's bytes (which the file must hold)."""
    file = os.fspath(file)
    _require_file(file)
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        if size < 8:
            raise _unreadable(file, f"it has {size} bytes, fewer than the 8 that give the header's length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise _unreadable(file, f"it promises a header of {n:,} bytes, but the file has {size:,} bytes in all")
        text = f.read(n)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _unreadable(file, f"its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _unreadable(file, f"its header is a JSON {type(header).__name__}, expected an object")
    data_start, data_size = 8 + n, size - 8 - n
    infos = {name: _tensor_info(file, name, entry, data_start, data_size)
             for name, entry in header.items() if name != "__metadata__"}
    _check_no_overlap(file, infos.values())
    return infos


def _tensor_info(file, name, entry, data_start, data_size) -> TensorInfo:
    """One header entry, checked: a known dtype, a shape of whole numbers, and offsets inside the
    data that span exactly shape × item size bytes."""
    if not isinstance(entry, dict) or entry.get("dtype") not in ITEM_SIZES:
        got = entry.get("dtype") if isinstance(entry, dict) else entry
        raise _unreadable(file, f"tensor {name!r} has dtype {got!r}, not one of {sorted(ITEM_SIZES)}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise _unreadable(file, f"tensor {name!r} has shape {shape!r}, expected a list of whole numbers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _unreadable(file, f"tensor {name!r} has data_offsets {offsets!r}, expected [begin, end] with "
                                "0 <= begin <= end")
    begin, end = offsets
    expected = math.prod(shape) * ITEM_SIZES[entry["dtype"]]
    if end - begin != expected:
        raise _unreadable(file, f"tensor {name!r} of shape {tuple(shape)} and dtype {entry['dtype']} needs "
                                f"{expected:,} bytes, but its data_offsets span {end - begin:,}")
    if end > data_size:
        raise _unreadable(file, f"tensor {name!r} lies at bytes {begin:,}..{end:,} of the data, but the file "
                                f"holds only {data_size:,} bytes of data")
    return TensorInfo(file, name, entry["dtype"], tuple(shape), data_start + begin, expected)


def _check_no_overlap(file, infos) -> None:
    spans = sorted((i.start, i.start + i.nbytes, i.name) for i in infos if i.nbytes)
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise _unreadable(file, f"tensors {a!r} and {b!r} overlap in the data")


def read_tensor(info: TensorInfo) -> np.ndarray:
    """The array of one tensor: exactly ``info.nbytes`` bytes read from ``info.file``."""
    dtype = info.numpy_dtype
    if dtype is None:
        raise CheckpointError(f"tensor {info.name!r} in {info.file} is bfloat16, which NumPy cannot hold; "
                              "convert the checkpoint to float32 (e.g. with transformers: "
                              "model.to(torch.float32).save_pretrained(p, safe_serialization=True))")
    count = info.nbytes // dtype.itemsize
    with open(info.file, "rb") as f:
        f.seek(info.start)
        array = np.fromfile(f, dtype=dtype, count=count)
    if array.size != count:
        raise _unreadable(info.file, f"tensor {info.name!r} ends past the end of the file")
    return array.reshape(info.shape).astype(dtype.newbyteorder("="), copy=False)


def read_safetensors(file) -> dict[str, np.ndarray]:
    """``{name: ndarray}`` of every tensor in a .safetensors file (its header checked first)."""
    return {name: read_tensor(info) for name, info in read_header(file).items()}


def write_safetensors(tensors: dict, file, metadata=None) -> None:
    """Write ``{name: ndarray}`` to ``file`` (C-contiguous copies where needed), as safetensors."""
    import safetensors
    import safetensors.numpy      # looked up at call time: tests replace save_file to simulate a full disk

    try:
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.fspath(file),
                                    metadata=metadata)
    except safetensors.SafetensorError as e:
        # the library reports a failed write (a full disk: "No space left on device (os error 28)") as
        # its own error type; it is an OSError for us, so the CLI says it in one line, no traceback
        code = errno.ENOSPC if "os error 28" in str(e) or "No space" in str(e) else errno.EIO
        raise OSError(code, os.strerror(code) if code == errno.ENOSPC else str(e), os.fspath(file)) from e
