#!/usr/bin/env python3
"""Verifies the CRC-32C checksums of vitc checkpoints independently of vit (the standard
library alone; the `crc32c` package, when installed, only makes it faster).

The design (src/train/checkpoint.h): metadata "crc32c/<tensor>" = CRC-32C of the tensor's
bytes as stored, "crc32c.header" = CRC-32C of the canonical header
  b"m\\0KEY\\0VALUE\\0" for each other metadata entry in bytewise key order, then
  b"t\\0NAME\\0DTYPE\\0D0,D1,...\\0" for each tensor in bytewise name order,
each value 8 lowercase hex digits.

usage: python3 tools/verify_checksums.py FILE.safetensors [FILE...]
Prints one line per problem ("FILE: tensor NAME: checksum mismatch ..."), then
"verify_checksums: N passed, M failed". Exit 0 all verified, 1 a mismatch or a file without
checksums, 2 a file that cannot be read as safetensors.
"""

import json
import struct
import sys

try:
    from crc32c import crc32c as _fast
except ImportError:  # the table below does the same, slower
    _fast = None

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    _TABLE.append(_c)


def crc32c(data, crc=0):
    if _fast is not None:
        return _fast(data, crc)
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _TABLE[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def header_crc(meta, tensors):
    c = 0
    for key in sorted(k for k in meta if k != "crc32c.header"):
        for field in ("m", key, meta[key]):
            c = crc32c(field.encode() + b"\0", c)
    for name in sorted(tensors, key=lambda s: s.encode()):
        t = tensors[name]
        for field in ("t", name, t["dtype"], ",".join(str(d) for d in t["shape"])):
            c = crc32c(field.encode() + b"\0", c)
    return c


def verify(path):
    """(problems, readable)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
        (hlen,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + hlen])
    except (OSError, ValueError, struct.error) as e:
        return [f"{path}: cannot read as safetensors: {e}"], False
    meta = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + hlen:]
    if "crc32c.header" not in meta:
        return [f"{path}: no checksums (no crc32c.header in the metadata)"], True
    problems = []
    want, got = meta["crc32c.header"], f"{header_crc(meta, header):08x}"
    if want != got:
        problems.append(f"{path}: header checksum mismatch (stored {want}, computed {got})")
    for name, t in header.items():
        begin, end = t["data_offsets"]
        want, got = meta.get("crc32c/" + name), f"{crc32c(data[begin:end]):08x}"
        if want != got:
            problems.append(f"{path}: tensor {name}: checksum mismatch (stored {want}, computed {got})")
    for key in meta:
        if key.startswith("crc32c/") and key[7:] not in header:
            problems.append(f"{path}: {key}: no such tensor")
    return problems, True


def main():
    paths = sys.argv[1:]
    if not paths or any(p in ("-h", "--help") for p in paths):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    passed = failed = 0
    readable = True
    for p in paths:
        problems, ok = verify(p)
        readable &= ok
        for line in problems:
            print(line)
        failed += bool(problems)
        passed += not problems
    print(f"verify_checksums: {passed} passed, {failed} failed")
    sys.exit(2 if not readable else 1 if failed else 0)


if __name__ == "__main__":
    main()
