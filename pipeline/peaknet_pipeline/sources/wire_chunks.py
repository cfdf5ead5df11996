"""A message's HDF5 chunks, read directly from the message buffer, for speed and for safety.

Speed: an unfiltered dataset whose chunks lie in order one after another (how the streamer
and h5py write a batch) is already the array; `in_place` returns a view of the message
instead of having HDF5 copy it out.

Safety: the bitshuffle filter (LZ4 or zstd inside) believes the sizes written in a chunk: a
corrupted chunk makes it read or write out of bounds and kills the process (found by the fuzz
test), and one bad message must never take the ingest down. So before HDF5 reads a bitshuffle
dataset, every block of every chunk is decoded once here with the libraries' bounds-checked
entry points (LZ4_decompress_safe, ZSTD_decompress, from the plugin hdf5plugin ships) and must
come out at exactly the size the filter will assume. Costs one extra decompression, for
bitshuffle only. Not checked: zfp, sz, sz3, sperr, htj2k and fcidecomp have no bounds-checked
form to run first; a corrupted chunk in those formats can still crash the reader.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

import numpy as np

from .wire import WireError

BITSHUFFLE = 32008
COMPRESSION = {0: "none", 2: "lz4", 3: "zstd"}  # bitshuffle's cd_values[4]
HEADER = 12  # uint64 BE uncompressed bytes, uint32 BE block bytes


@functools.cache
def _codecs() -> Any:
    import hdf5plugin

    lib = ctypes.CDLL(os.path.join(hdf5plugin.PLUGIN_PATH, "libh5bshuf.so"))
    lib.LZ4_decompress_safe.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.LZ4_decompress_safe.restype = ctypes.c_int
    lib.ZSTD_decompress.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    lib.ZSTD_decompress.restype = ctypes.c_size_t
    return lib


def in_place(dataset: Any, buf: np.ndarray) -> np.ndarray | None:
    """The dataset as a view of `buf` (the message as uint8) when its bytes are stored there
    as-is and in order; None when HDF5 has to assemble or decode them."""
    dtype, shape = dataset.dtype, dataset.shape
    if dtype.kind not in "fiu" or not dtype.isnative or not dataset.size:
        return None
    nbytes = dataset.size * dtype.itemsize
    if dataset.chunks is None:
        offset = dataset.id.get_offset()
    else:
        offset = _consecutive_chunks(dataset)
    if offset is None or offset + nbytes > len(buf):
        return None
    return buf[offset : offset + nbytes].view(dtype).reshape(shape)


def _consecutive_chunks(dataset: Any) -> int | None:
    """Offset of the first chunk if the chunks are whole rows, unfiltered and back to back."""
    chunks, shape = dataset.chunks, dataset.shape
    if tuple(chunks[1:]) != tuple(shape[1:]) or dataset.id.get_create_plist().get_nfilters():
        return None
    count = -(-shape[0] // chunks[0])
    if dataset.id.get_num_chunks() != count:
        return None
    stride = int(np.prod(chunks)) * dataset.dtype.itemsize
    first = dataset.id.get_chunk_info(0).byte_offset
    for i in range(count):
        info = dataset.id.get_chunk_info(i)
        if info.chunk_offset[0] != i * chunks[0] or info.byte_offset != first + i * stride:
            return None
    return first


def check_filters(dataset: Any, buf: np.ndarray, where: str) -> None:
    """Raise WireError unless every bitshuffle chunk of `dataset` decodes within bounds.
    `buf` is the whole message as uint8 (chunk addresses are offsets into it)."""
    plist = dataset.id.get_create_plist()
    count = plist.get_nfilters()
    for index in range(count):
        code, _flags, values, _name = plist.get_filter(index)
        if code != BITSHUFFLE:
            continue
        if index != count - 1:
            raise WireError("corrupt", f"{where}: bitshuffle is not the outermost filter")
        itemsize = dataset.dtype.itemsize
        if len(values) < 3 or values[2] != itemsize:
            raise WireError(
                "corrupt",
                f"{where}: bitshuffle element size {values[2:3]} "
                f"does not match dtype {dataset.dtype}",
            )
        compression = COMPRESSION.get(values[4] if len(values) > 4 else 0)
        if compression is None:
            raise WireError("corrupt", f"{where}: unknown bitshuffle compression {values[4]}")
        if compression != "none":
            _check_chunks(dataset, buf, where, index, compression)


def _check_chunks(dataset: Any, buf: np.ndarray, where: str, bit: int, compression: str) -> None:
    chunk_bytes = int(np.prod(dataset.chunks)) * dataset.dtype.itemsize
    for i in range(dataset.id.get_num_chunks()):
        info = dataset.id.get_chunk_info(i)
        if info.filter_mask & (1 << bit):
            continue  # stored without this filter
        if info.byte_offset is None or info.byte_offset + info.size > len(buf):
            raise WireError("corrupt", f"{where}: chunk {i} lies outside the message")
        chunk = buf[info.byte_offset : info.byte_offset + info.size]
        reason = check_chunk(chunk, chunk_bytes, dataset.dtype.itemsize, compression)
        if reason:
            raise WireError("corrupt", f"{where}: bitshuffle chunk {i}: {reason}")


def check_chunk(chunk: np.ndarray, expected: int, itemsize: int, compression: str) -> str | None:
    """Why this bitshuffle-compressed chunk would fool the filter, or None if it is sound."""
    if len(chunk) < HEADER:
        return "shorter than its header"
    total = int.from_bytes(chunk[:8].tobytes(), "big")
    block = int.from_bytes(chunk[8:12].tobytes(), "big")
    if total != expected:
        return f"declares {total} bytes, the dataset's chunks hold {expected}"
    if block <= 0 or block % (8 * itemsize):
        return f"block size {block} is not a positive multiple of {8 * itemsize}"
    elements, per_block = total // itemsize, block // itemsize
    tail = elements % per_block
    sizes = [block] * (elements // per_block) + (
        [(tail - tail % 8) * itemsize] if tail >= 8 else []
    )
    lib, pos = _codecs(), HEADER
    scratch = np.empty(max(sizes, default=0), dtype=np.uint8)
    base = chunk.ctypes.data
    for want in sizes:
        if pos + 4 > len(chunk):
            return "ends inside a block header"
        size = int.from_bytes(chunk[pos : pos + 4].tobytes(), "big")
        pos += 4
        if size > len(chunk) - pos:
            return f"block of {size} bytes runs past the chunk end"
        if compression == "lz4":
            got = lib.LZ4_decompress_safe(base + pos, scratch.ctypes.data, size, want)
        else:
            got = lib.ZSTD_decompress(scratch.ctypes.data, want, base + pos, size)
        if got != want:
            return f"a block does not decode to its {want} bytes ({compression} error)"
        pos += size
    if pos + (elements % 8) * itemsize > len(chunk):
        return "ends before its uncompressed tail"
    return None
