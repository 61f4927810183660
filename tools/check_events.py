#!/usr/bin/env python3
"""Checks a TensorBoard log folder written by vitc, with TensorBoard's own readers.

usage: python3 tools/check_events.py LOGDIR [--scalar TAG]... [--steps 10,20,30]
           [--text TAG]... [--text-contains STR] [--values-from FILE] [--tol 1e-6] [--dump]
       (pip install tensorboard; TensorFlow is not needed)

Reads every events.out.tfevents.* file of LOGDIR twice:
  - with event_accumulator.EventAccumulator (the classic reader, everything kept): scalars
    come back through Scalars(), texts through Tensors();
  - with plugin_event_accumulator.EventAccumulator, the reader behind `tensorboard --logdir`
    in 2.x, which must file the scalars under the "scalars" plugin (data class SCALAR) and the
    texts under the "text" plugin (data class TENSOR): that is what makes the dashboards show
    them.
Each file must start with the file_version record "brain.Event:2".
Before that, every record's framing is checked here (length, both masked CRC-32Cs, as
TensorFlow writes them): TensorBoard's readers take a CRC mismatch for the end of a file still
being written and silently drop the rest, so a flipped bit would otherwise pass unseen.

--scalar TAG         the scalar tag must be there (repeatable); with --steps, its steps must
                     be exactly that list, in order
--text TAG           the text tag must be there (repeatable); with --text-contains, its last
                     text must contain STR
--values-from FILE   lines "TAG STEP VALUE" (whitespace-separated, '#' comments): each must
                     match a logged scalar within --tol (relative; the log holds float32)
--tf                 read through TensorFlow when it is installed (slower); by default
                     TensorBoard's own TF-free reader is forced, the one a plain
                     `pip install tensorboard` uses (it verifies both CRCs of every record)
--dump               prints every scalar as "TAG<TAB>STEP<TAB>VALUE" and every text as
                     "TAG<TAB>STEP<TAB>JSON-STRING" on stdout (the summary line then goes to
                     stderr); a log of scalars only dumps into a valid --values-from file

Prints "check_events: N scalars ok, M texts ok (...)" and exits 0, or prints one
"check_events: LOGDIR: ..." line per mismatch and exits 1 (2 when nothing could be read).
"""
import argparse
import json
import math
import os
import struct
import sys
import types

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_checksums import crc32c  # noqa: E402

if "--tf" not in sys.argv:
    # tensorboard.compat picks its TF-free stub when this module can be imported.
    sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")

from tensorboard.backend.event_processing import event_accumulator as classic
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing import plugin_event_accumulator as modern
from tensorboard.compat.proto import summary_pb2
from tensorboard.util import tensor_util


def masked_crc(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def check_framing(path, problems):
    """TFRecord framing of one events file: u64 length, masked CRC of it, data, masked CRC of the data."""
    with open(path, "rb") as f:
        blob = f.read()
    at = n = 0
    name = os.path.basename(path)
    while at < len(blob):
        where = f"{name}: record {n} at byte {at}"
        if len(blob) - at < 12:
            problems.append(f"{where}: truncated header ({len(blob) - at} bytes)")
            return
        (length,) = struct.unpack_from("<Q", blob, at)
        (lcrc,) = struct.unpack_from("<I", blob, at + 8)
        if masked_crc(blob[at:at + 8]) != lcrc:
            problems.append(f"{where}: length CRC mismatch (corrupt file)")
            return
        end = at + 12 + length
        if end + 4 > len(blob):
            problems.append(f"{where}: truncated (length {length}, {len(blob) - at - 12} bytes follow)")
            return
        (dcrc,) = struct.unpack_from("<I", blob, end)
        if masked_crc(blob[at + 12:end]) != dcrc:
            problems.append(f"{where}: data CRC mismatch (corrupt file)")
        at, n = end + 4, n + 1


def text_of(tensor_event):
    arr = tensor_util.make_ndarray(tensor_event.tensor_proto)
    if arr.shape:  # vitc writes one string, shape []
        raise ValueError(f"text tensor has shape {list(arr.shape)}, expected a scalar")
    value = arr.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load(logdir, problems):
    """(scalars {tag: [(step, value)]}, texts {tag: [(step, text)]}, number of files)."""
    files = sorted(f for f in os.listdir(logdir) if "tfevents" in f)
    for name in files:
        check_framing(os.path.join(logdir, name), problems)
        first = next(iter(event_file_loader.EventFileLoader(os.path.join(logdir, name)).Load()), None)
        if first is None or first.file_version != "brain.Event:2":
            got = "no records" if first is None else repr(first.file_version or first.WhichOneof("what"))
            problems.append(f"{name}: first record is {got}, not file_version 'brain.Event:2'")

    acc = classic.EventAccumulator(logdir, size_guidance={k: 0 for k in classic.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    texts = {}
    for t in tags["tensors"]:
        plugin = acc.SummaryMetadata(t).plugin_data.plugin_name
        if plugin != "text":
            problems.append(f"tensor tag {t}: plugin {plugin!r}, expected 'text'")
            continue
        try:
            texts[t] = [(e.step, text_of(e)) for e in acc.Tensors(t)]
        except ValueError as e:
            problems.append(f"text {t}: {e}")

    # The 2.x path: legacy values are migrated to tensors and given a data class on load.
    acc2 = modern.EventAccumulator(logdir, size_guidance=modern.STORE_EVERYTHING_SIZE_GUIDANCE)
    acc2.Reload()
    want = {"scalars": (scalars, summary_pb2.DATA_CLASS_SCALAR), "text": (texts, summary_pb2.DATA_CLASS_TENSOR)}
    for plugin, (expected, data_class) in want.items():
        seen = acc2.PluginTagToContent(plugin) if plugin in acc2.ActivePlugins() else {}
        for tag, events in expected.items():
            if tag not in seen:
                problems.append(f"{tag}: TensorBoard 2.x does not list it under the {plugin} plugin")
            elif acc2.SummaryMetadata(tag).data_class != data_class:
                problems.append(f"{tag}: data class {acc2.SummaryMetadata(tag).data_class}, expected {data_class}")
            elif len(acc2.Tensors(tag)) != len(events):
                problems.append(f"{tag}: TensorBoard 2.x reads {len(acc2.Tensors(tag))} values, classic reader {len(events)}")
    return scalars, texts, len(files)


def close(a, b, tol):
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol * 1e-3)


def check_values(path, scalars, tol, problems):
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"{path}:{lineno}"
            try:
                tag, step, value = fields[0], int(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                problems.append(f"{where}: expected 'TAG STEP VALUE', got {line.strip()!r}")
                continue
            logged = [v for s, v in scalars.get(tag, []) if s == step]
            if not logged:
                problems.append(f"{where}: no scalar {tag} at step {step}")
            elif not close(logged[-1], value, tol):
                problems.append(f"{where}: {tag} at step {step} is {logged[-1]!r}, expected {value!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("logdir")
    ap.add_argument("--scalar", action="append", default=[])
    ap.add_argument("--steps", help="comma-separated steps every --scalar tag must have")
    ap.add_argument("--text", action="append", default=[])
    ap.add_argument("--text-contains")
    ap.add_argument("--values-from")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--tf", action="store_true")
    ap.add_argument("--dump", action="store_true")
    a = ap.parse_args()

    if not os.path.isdir(a.logdir):
        print(f"check_events: {a.logdir}: not a folder")
        return 2
    problems = []
    scalars, texts, nfiles = load(a.logdir, problems)
    if nfiles == 0:
        print(f"check_events: {a.logdir}: no events.out.tfevents.* file")
        return 2

    steps = [int(s) for s in a.steps.split(",")] if a.steps else None
    for tag in a.scalar:
        if tag not in scalars:
            problems.append(f"no scalar {tag} (scalars: {', '.join(sorted(scalars)) or 'none'})")
        elif steps is not None and [s for s, _ in scalars[tag]] != steps:
            problems.append(f"scalar {tag}: steps {[s for s, _ in scalars[tag]]}, expected {steps}")
    for tag in a.text:
        if tag not in texts:
            problems.append(f"no text {tag} (texts: {', '.join(sorted(texts)) or 'none'})")
        elif a.text_contains is not None and a.text_contains not in texts[tag][-1][1]:
            problems.append(f"text {tag}: {a.text_contains!r} not in {texts[tag][-1][1]!r}")
    if a.values_from:
        check_values(a.values_from, scalars, a.tol, problems)

    if a.dump:
        for tag in sorted(scalars):
            for step, value in scalars[tag]:
                print(f"{tag}\t{step}\t{value:.9g}")
        for tag in sorted(texts):
            for step, text in texts[tag]:
                print(f"{tag}\t{step}\t{json.dumps(text)}")
    for p in problems:
        print(f"check_events: {a.logdir}: {p}")
    if problems:
        return 1
    n = sum(len(v) for v in scalars.values())
    m = sum(len(v) for v in texts.values())
    print(f"check_events: {n} scalars ok, {m} texts ok ({len(scalars)} scalar tags, {len(texts)} text tags, "
          f"{nfiles} files)", file=sys.stderr if a.dump else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
