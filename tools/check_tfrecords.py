#!/usr/bin/env python3
"""Checks TFRecord files of tf.train.Example image records, independently of vitc.

usage: python3 tools/check_tfrecords.py FILE [FILE...]      (pip install tfrecord)

For every record: both masked CRC-32Cs of the framing (the `tfrecord` package's reader does
not verify them, so the framing is read here, with the package's CRC helper), then the
Example parsed by the package's protobuf classes, which must have image/encoded as a
bytes_list and image/class/label as an int64_list, each with at least one value. Prints one
line per record, "FILE record I (byte OFFSET): label L sha256 HEX", one "FAIL ..." line per
problem, then "check_tfrecords: N passed, M failed" (records). Exits 0 when all passed,
1 if a record failed, 2 if a file could not be read.
"""
import hashlib
import struct
import sys

from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

MAX_RECORD = 1 << 30  # the C reader's cap


def masked_crc(data):
    return struct.unpack("<I", TFRecordWriter.masked_crc(bytes(data)))[0]


def check_example(data):
    """(label, sha256 of image/encoded) or raises ValueError naming the problem."""
    ex = example_pb2.Example()
    try:
        ex.ParseFromString(bytes(data))
    except Exception as e:  # the protobuf runtime's DecodeError
        raise ValueError(f"not a tf.train.Example: {e}")
    feats = ex.features.feature
    if "image/encoded" not in feats:
        raise ValueError("no image/encoded")
    enc = feats["image/encoded"]
    if enc.WhichOneof("kind") != "bytes_list" or not enc.bytes_list.value:
        raise ValueError(f"image/encoded is {enc.WhichOneof('kind')}, not a non-empty bytes_list")
    if "image/class/label" not in feats:
        raise ValueError("no image/class/label")
    lab = feats["image/class/label"]
    if lab.WhichOneof("kind") != "int64_list" or not lab.int64_list.value:
        raise ValueError(f"image/class/label is {lab.WhichOneof('kind')}, not a non-empty int64_list")
    return lab.int64_list.value[0], hashlib.sha256(enc.bytes_list.value[0]).hexdigest()


def check_file(path, counts):
    """Walks one file; returns False when it could not be read at all."""
    try:
        f = open(path, "rb")
    except OSError as e:
        print(f"FAIL {path}: cannot open: {e}")
        return False
    with f:
        index = 0
        while True:
            offset = f.tell()
            head = f.read(12)
            if not head:
                return True  # clean end
            where = f"{path} record {index} (byte {offset})"
            # A framing error leaves no way to find the next record: stop this file.
            if len(head) < 12:
                print(f"FAIL {where}: truncated header")
                counts[1] += 1
                return True
            (length,) = struct.unpack("<Q", head[:8])
            if masked_crc(head[:8]) != struct.unpack("<I", head[8:])[0]:
                print(f"FAIL {where}: length CRC mismatch")
                counts[1] += 1
                return True
            if length > MAX_RECORD:
                print(f"FAIL {where}: length {length} over 1 GiB")
                counts[1] += 1
                return True
            body = f.read(length + 4)
            if len(body) < length + 4:
                print(f"FAIL {where}: truncated (length {length}, {len(body)} bytes follow)")
                counts[1] += 1
                return True
            data = body[:length]
            if masked_crc(data) != struct.unpack("<I", body[length:])[0]:
                print(f"FAIL {where}: data CRC mismatch")
                counts[1] += 1
            else:
                try:
                    label, digest = check_example(data)
                    print(f"{where}: label {label} sha256 {digest}")
                    counts[0] += 1
                except ValueError as e:
                    print(f"FAIL {where}: {e}")
                    counts[1] += 1
            index += 1


def main():
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    counts = [0, 0]
    unreadable = False
    for path in sys.argv[1:]:
        if not check_file(path, counts):
            unreadable = True
    print(f"check_tfrecords: {counts[0]} passed, {counts[1]} failed")
    if unreadable:
        return 2
    return 1 if counts[1] else 0


if __name__ == "__main__":
    sys.exit(main())
