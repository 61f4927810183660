#!/usr/bin/env python3
"""Writes the TFRecord fixture for tests/test_tfrecord.c with an independent writer.

usage: python3 tools/make_tfrecord_fixtures.py OUTDIR     (pip install tfrecord pillow)

OUTDIR/records.tfrecord: 5 tf.train.Example records serialized and framed by the `tfrecord`
pip package (its own CRC-32C and protobuf code, not ours; map entries in sorted key order), with the ImageNet preprocessing script's
features: small JPEGs encoded by PIL, 1-based labels, and in some records float bounding
boxes (float_list features the C reader must skip). OUTDIR/records.json lists, one record
per line, its byte offset and length in the file, the label, and the image/encoded bytes'
length, first 16 bytes (hex), CRC-32C and SHA-256, so the C test can check the exact bytes
without a SHA-256 of its own. Output is reproducible for a given Pillow version.
"""
import hashlib
import io
import json
import os
import struct
import sys

import crc32c  # a dependency of the tfrecord package
from PIL import Image
from tfrecord import TFRecordWriter, example_pb2

# (label, width, height, rgb, bbox) — labels cover 1, the ImageNet maximum 1000, a large
# value (several varint bytes) and 0 (which proto3 writes packed as one zero byte).
RECORDS = [
    (1, 8, 8, (200, 30, 30), None),
    (1000, 16, 8, (30, 200, 30), (0.1, 0.2, 0.9, 0.8)),
    (457, 8, 16, (30, 30, 200), None),
    (0, 12, 12, (128, 128, 128), (0.0, 0.0, 1.0, 1.0)),
    (123456789012, 9, 7, (250, 250, 10), None),
]


def tiny_jpeg(w, h, rgb):
    img = Image.new("RGB", (w, h), rgb)
    # A diagonal line so the image is not flat (more realistic JPEG bytes).
    for i in range(min(w, h)):
        img.putpixel((i, i), (255 - rgb[0], 255 - rgb[1], 255 - rgb[2]))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_record(writer, record):
    """TFRecordWriter.write's framing, for an already serialized record (its CRC helper)."""
    head = struct.pack("<Q", len(record))
    writer.file.write(head)
    writer.file.write(TFRecordWriter.masked_crc(head))
    writer.file.write(record)
    writer.file.write(TFRecordWriter.masked_crc(record))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2])
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "records.tfrecord")
    writer = TFRecordWriter(path)
    rows = []
    for i, (label, w, h, rgb, bbox) in enumerate(RECORDS):
        jpeg = tiny_jpeg(w, h, rgb)
        datum = {
            "image/height": (h, "int"),
            "image/width": (w, "int"),
            "image/colorspace": (b"RGB", "byte"),
            "image/channels": (3, "int"),
            "image/class/label": (label, "int"),
            "image/class/synset": (b"n%08d" % (1440764 + i), "byte"),
            "image/class/text": (b"fixture class %d" % i, "byte"),
            "image/format": (b"JPEG", "byte"),
            "image/filename": (b"fixture_%d.JPEG" % i, "byte"),
            "image/encoded": (jpeg, "byte"),
        }
        if bbox:
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), bbox):
                datum["image/object/bbox/" + k] = ([v], "float")
        # The package serializes the Example; re-serialized with deterministic=True because the
        # protobuf runtime otherwise writes map entries in an order that changes run to run.
        record = TFRecordWriter.serialize_tf_example(datum)
        record = example_pb2.Example.FromString(record).SerializeToString(deterministic=True)
        offset = writer.file.tell()
        write_record(writer, record)
        length = len(record)
        rows.append({
            "index": i,
            "offset": offset,
            "length": length,
            "label": label,
            "encoded_len": len(jpeg),
            "encoded_head": jpeg[:16].hex(),
            "encoded_crc32c": crc32c.crc32c(jpeg),
            "sha256": hashlib.sha256(jpeg).hexdigest(),
        })
    writer.close()
    # One record per line: trivial for the C test to read without a JSON tree.
    with open(os.path.join(out, "records.json"), "w") as f:
        f.write('{"file": "records.tfrecord", "records": [\n')
        f.write(",\n".join(json.dumps(r) for r in rows))
        f.write("\n]}\n")
    size = os.path.getsize(path)
    print(f"wrote {path} ({len(rows)} records, {size} bytes) and records.json")


if __name__ == "__main__":
    main()
