"""The feature cache as a whole, for `headbench cache ls` / `cache rm`: list entries with their
sizes, remove them (renamed away first, so a reader never sees half an entry).

Entries are the folders `features.extract` writes (`<cache_dir>/<key>/`); nothing else under
the cache root is ever touched.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from . import features, io
from .errors import HeadbenchError


def _entry_dirs(cache_dir: Path) -> list[Path]:
    """Entry directories (named like a key, so nothing else under the root is ever touched)."""
    return sorted(p for p in features.listdir(cache_dir) if p.is_dir() and features.KEY_RE.match(p.name))


def _size_bytes(path: Path) -> int:
    """Bytes of the entry's files; temporary files of unfinished writes do not count."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            if not io.is_temp_file(Path(name)):
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(root, name))
    return total


def _sweep_removed(cache_dir: Path) -> None:
    """Delete `.removing-*` folders an interrupted `cache rm` left, once older than
    `io.STALE_SECONDS` (a younger one may still be being deleted by a live process)."""
    now = time.time()
    for trash in cache_dir.glob(".removing-*"):
        with contextlib.suppress(OSError):
            if now - trash.lstat().st_ctime >= io.STALE_SECONDS:
                shutil.rmtree(trash, ignore_errors=True)


def list_entries(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One dict per cache entry, oldest first: key, backbone, weights, view, precision, form
    ('maps' or the statistics, 'avg+max'), images (cached feature rows), failures,
    size_bytes, path, created.

    Entries whose meta.json is missing or unreadable (an extraction that never got going) are
    listed with None for the fields it would have held, so they can still be removed.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else features.default_cache_dir()
    _sweep_removed(cache_dir)
    entries = []
    for entry in _entry_dirs(cache_dir):
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        index = features.ChunkIndex.load(entry / "chunks")
        entries.append({"key": entry.name, "backbone": meta.get("backbone_name"),
                        "weights": meta.get("weights"), "view": meta.get("view"),
                        "precision": meta.get("precision"),
                        "form": "+".join(meta["form"]) if meta.get("form") else
                        ("maps" if meta else None), "images": len(index.rows),
                        "failures": len(index.failures), "size_bytes": _size_bytes(entry),
                        "path": str(entry), "created": meta.get("created")})
    return sorted(entries, key=lambda e: (e["created"] or "", e["key"]))


def remove_entries(cache_dir: str | Path | None = None,
                   keys: Sequence[str] | None = None) -> int:
    """Delete cache entries; `keys` None deletes all. Returns how many were removed.

    Each key may be a unique prefix; an unknown or ambiguous one is an error and then nothing
    is deleted.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else features.default_cache_dir()
    _sweep_removed(cache_dir)
    entries = _entry_dirs(cache_dir)
    if keys is None:
        chosen = entries
    else:
        chosen = list({e.name: e for e in (_match(entries, k, cache_dir) for k in keys)}.values())
    for entry in chosen:
        # Rename first so readers never see a half-deleted entry, then delete.
        trash = entry.with_name(f".removing-{entry.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(entry, trash)
        except OSError as e:
            raise HeadbenchError(f"cannot remove cache entry '{entry}': {e.strerror}")
        shutil.rmtree(trash, ignore_errors=True)
    return len(chosen)


def _match(entries: list[Path], prefix: str, cache_dir: Path) -> Path:
    hits = [e for e in entries if prefix and e.name.startswith(prefix.lower())]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise HeadbenchError(f"no cache entry '{prefix}' in {cache_dir}: "
                             "list the keys with `headbench cache ls`")
    raise HeadbenchError(f"cache key '{prefix}' matches {len(hits)} entries "
                         f"({', '.join(e.name for e in hits[:4])}): give more characters")
