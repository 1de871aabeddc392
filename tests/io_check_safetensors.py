#!/usr/bin/env python3
"""Reads a safetensors file written by sora (tests/io_fixtures.cpp) with nothing but the
standard library and checks it against the format's rules and the values sora wrote: an
independent reader, so that sora's writer and reader cannot agree on a mistake."""

import json
import math
import struct
import sys

# What io_fixtures.cpp writes: name -> (dtype, shape, values in row-major order).
EXPECTED = {
    "blocks.0.attn.q.weight": ("F32", [4, 3], [0, 1, -2, 3, -4, 5.5, -6, 0.5, 1, -1, 0.25, 0.25]),
    "blocks.0.attn.q.bias": ("F16", [4], [0.5, -0.25, 1, 2]),
    "blocks.0.ln.weight": ("BF16", [3], [1, 1.5, -3]),
    "head.weight": ("F64", [2, 2], [1e-3, -2, 3.5, 4]),
    "scalar": ("F32", [], [42]),
}
METADATA = {"format": "pt", "writer": "sora"}
ITEM_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def decode(dtype, raw):
    if dtype == "F64":
        return list(struct.unpack("<%dd" % (len(raw) // 8), raw))
    if dtype == "F32":
        return list(struct.unpack("<%df" % (len(raw) // 4), raw))
    if dtype == "F16":
        return list(struct.unpack("<%de" % (len(raw) // 2), raw))
    # bfloat16 is the top half of a float32.
    halves = struct.unpack("<%dH" % (len(raw) // 2), raw)
    return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]


def check(cond, message):
    if not cond:
        print("FAIL:", message)
        sys.exit(1)


def main(path):
    with open(path, "rb") as f:
        blob = f.read()
    check(len(blob) >= 8, "file shorter than 8 bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    check(n % 8 == 0, "header length %d is not a multiple of 8" % n)
    check(8 + n <= len(blob), "header runs past the end")
    text = blob[8 : 8 + n].decode("utf-8")
    padding = len(text) - len(text.rstrip(" "))
    check(padding < 8, "%d padding spaces; at most 7 are needed" % padding)
    check(text.rstrip(" ").startswith("{") and text.rstrip(" ").endswith("}"), "not an object")
    # Keep the header's key order: data must follow it.
    header = json.loads(text, object_pairs_hook=lambda pairs: pairs)
    keys = [k for k, _ in header]
    check(len(keys) == len(set(keys)), "duplicate keys")
    entries = dict(header)
    metadata = dict(entries.pop("__metadata__", []))
    check(metadata == METADATA, "metadata %r" % (metadata,))
    check(set(entries) == set(EXPECTED), "tensor names %r" % sorted(entries))

    data = blob[8 + n :]
    offset = 0
    for name in [k for k in keys if k != "__metadata__"]:
        info = dict(entries[name])
        check(set(info) == {"dtype", "shape", "data_offsets"}, "%s: fields %r" % (name, info))
        dtype, shape, values = EXPECTED[name]
        check(info["dtype"] == dtype, "%s: dtype %s" % (name, info["dtype"]))
        check(info["shape"] == shape, "%s: shape %r" % (name, info["shape"]))
        begin, end = info["data_offsets"]
        check(begin == offset, "%s: begins at %d, expected %d (contiguous, header order)" % (name, begin, offset))
        check(end - begin == math.prod(shape) * ITEM_SIZE[dtype], "%s: byte count" % name)
        check(begin % ITEM_SIZE[dtype] == 0, "%s: misaligned" % name)
        got = decode(dtype, data[begin:end])
        check(got == [float(v) for v in values], "%s: values %r" % (name, got))
        offset = end
    check(offset == len(data), "data section has %d bytes, tensors cover %d" % (len(data), offset))
    print("OK: %s: %d tensors, header %d bytes, data %d bytes" % (path, len(entries), n, len(data)))


if __name__ == "__main__":
    main(sys.argv[1])
