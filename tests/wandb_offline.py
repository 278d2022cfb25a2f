"""Read what an offline W&B run wrote under a run directory, without W&B.

wandb >= 0.2x dropped its Python reader for the ``run-<id>.wandb`` transaction log
(the writer lives in the Go ``wandb-core``), so this parses the file directly: a
7-byte header (b":W&B", uint16 magic 0xBEE1, uint8 version 0) followed by the
LevelDB log format (32 KiB blocks; each chunk is a 7-byte header: crc32 uint32,
length uint16, type uint8) whose payloads are serialized
``wandb.proto.wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2 as pb

_IDENT = b":W&B"
_MAGIC = 0xBEE1
_FILE_HEADER_LEN = 7
_BLOCK_LEN = 32768
_CHUNK_HEADER_LEN = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(path: Path) -> Iterator[pb.Record]:
    """Yield every Record of one .wandb file, checking framing and checksums."""
    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER_LEN:
        raise ValueError(f"{path}: too short for a .wandb header")
    ident, magic, version = struct.unpack("<4sHB", data[:_FILE_HEADER_LEN])
    if ident != _IDENT or magic != _MAGIC or version != 0:
        raise ValueError(f"{path}: not a .wandb v0 file (ident={ident!r} magic={magic:#x} version={version})")

    pos = _FILE_HEADER_LEN  # the file header occupies the start of the first block
    pending: bytearray | None = None
    while pos + _CHUNK_HEADER_LEN <= len(data):
        left_in_block = _BLOCK_LEN - pos % _BLOCK_LEN
        if left_in_block < _CHUNK_HEADER_LEN:  # zero padding at the end of a block
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER_LEN])
        if crc == 0 and length == 0 and kind == 0:  # preallocated/unwritten tail
            break
        start = pos + _CHUNK_HEADER_LEN
        payload = data[start : start + length]
        if len(payload) != length:
            raise ValueError(f"{path}: truncated chunk at byte {pos}")
        if zlib.crc32(bytes([kind]) + payload) != crc:
            raise ValueError(f"{path}: checksum mismatch at byte {pos}")
        pos = start + length

        if kind == _FULL:
            yield _parse(payload)
        elif kind == _FIRST:
            pending = bytearray(payload)
        elif kind in (_MIDDLE, _LAST):
            if pending is None:
                raise ValueError(f"{path}: continuation chunk without a first chunk at byte {pos}")
            pending += payload
            if kind == _LAST:
                yield _parse(bytes(pending))
                pending = None
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")


def _parse(payload: bytes) -> pb.Record:
    record = pb.Record()
    record.ParseFromString(payload)
    return record


def _item_key(item: Any) -> tuple[str, ...]:
    return tuple(item.nested_key) if item.nested_key else (item.key,)


def _history_value(item: pb.HistoryItem) -> Any:
    # Newer wandb can write typed values (x_history_value_encoding="typed") instead of JSON.
    typed = item.WhichOneof("value")
    if typed is None:
        return json.loads(item.value_json)
    if typed == "none":
        return None
    if typed == "json":
        return json.loads(item.json)
    return getattr(item, typed)


def _set_nested(target: dict, key: tuple[str, ...], value: Any) -> None:
    for part in key[:-1]:
        target = target.setdefault(part, {})
    target[key[-1]] = value


_RUN_DIR_RE = re.compile(r"offline-run-(\d{8}_\d{6})-.+?(?:-(\d+))?")


def _offline_run_dirs(run_dir: Path) -> list[Path]:
    """offline-run-<YYYYmmdd_HHMMSS>-<id>[-<n>] folders in time order.

    wandb appends -1, -2, ... when a run (resumed with the same id) starts again within
    the same second.
    """

    def order(path: Path) -> tuple[str, int]:
        match = _RUN_DIR_RE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"unexpected W&B run folder name: {path}")
        return match.group(1), int(match.group(2) or 0)

    return sorted((p for p in (Path(run_dir) / "wandb").glob("offline-run-*") if p.is_dir()), key=order)


def read_offline_run(run_dir: Path) -> dict:
    """Config, history, summary and run metadata of the offline run(s) under run_dir/wandb/.

    Several offline-run-* folders (a resumed run) are merged in time order: later
    config/summary values win, histories are concatenated.
    """
    run_dirs = _offline_run_dirs(run_dir)
    if not run_dirs:
        raise FileNotFoundError(f"no offline-run-* folder under {Path(run_dir) / 'wandb'}")

    result: dict[str, Any] = {
        "config": {},
        "history": [],
        "summary": {},
        "run_id": None,
        "group": None,
        "name": None,
        "tags": [],
        "project": None,
    }
    for folder in run_dirs:
        files = sorted(folder.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file in {folder}")
        for path in files:
            for record in iter_records(path):
                _apply(result, record)
    result["config"].pop("_wandb", None)  # wandb's own bookkeeping, not the user's config
    return result


def _apply(result: dict, record: pb.Record) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "run":
        run = record.run
        result["run_id"] = run.run_id
        result["project"] = run.project or None
        result["group"] = run.run_group or None
        result["name"] = run.display_name or None
        result["tags"] = list(run.tags)
        for item in run.config.update:
            _set_nested(result["config"], _item_key(item), json.loads(item.value_json))
    elif kind == "config":
        for item in record.config.update:
            _set_nested(result["config"], _item_key(item), json.loads(item.value_json))
        for item in record.config.remove:
            result["config"].pop(item.key, None)
    elif kind == "history":
        row: dict[str, Any] = {}
        for item in record.history.item:
            _set_nested(row, _item_key(item), _history_value(item))
        result["history"].append(row)
    elif kind == "summary":
        for item in record.summary.update:
            _set_nested(result["summary"], _item_key(item), json.loads(item.value_json))
        for item in record.summary.remove:
            result["summary"].pop(item.key, None)
