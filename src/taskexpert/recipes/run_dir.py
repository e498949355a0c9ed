"""The directory of one `taskexpert run`: manifest.json, stages keyed by what they read.

Why keys, not a step counter: a user changes one setting (say the plain LoRA's learning rate)
and reruns with --resume. Each stage's key hashes the settings it reads, the fingerprints of
its input files and the output digests of the stages it reads from, so exactly the stages
downstream of the change get a new key and rerun; everything else is reused. A stage's
directory is written whole (`rundir.RunDir.step`) with a checksummed marker, so a kill leaves
either a finished stage or nothing, and a finished stage whose files were edited is caught.

The manifest records the config, package versions, input fingerprints, seeds, and per stage
its key, wall time and peak memory. The lock and leftovers handling are `rundir`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.io import remove_tree, write_json
from taskexpert.models import SMOLLM2_ALIAS, smollm2_location
from taskexpert.rundir import (
    MARKER,
    CorruptStep,
    RunDir,
    check_marker,
    clear_leftovers,
    identity_changes,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGES_DIR = "stages"
FORMAT = 1
BIG_FILE = 64 << 20  # above this, a file is fingerprinted by size and its first and last MiB
PACKAGES = (
    "taskexpert",
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "sentence-transformers",
    "numpy",
    "pydantic",
)


def package_versions() -> dict[str, str | None]:
    """The versions that decide a run's numbers, as the manifest records them."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= BIG_FILE:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:  # weights of a 7B model: hashing every byte on each resume costs minutes
            digest.update(f"size:{size}".encode())
            digest.update(handle.read(1 << 20))
            handle.seek(size - (1 << 20))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def fingerprint(path: str | Path) -> str:
    """A content fingerprint of a file or a directory tree (by relative path and content).
    The 'smollm2' alias is its GGUF file's; any other name that is not a path, the name's."""
    if str(path) == SMOLLM2_ALIAS:
        try:
            folder, gguf = smollm2_location()
            path = folder / gguf
        except InputError:  # not installed: loading it will say what to install
            pass
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = file.relative_to(path).as_posix()
            if rel.startswith(".") or "/." in rel:  # locks, caches, temp leftovers
                continue
            digest.update(f"{rel}\0{_file_digest(file)}\0".encode())
        return digest.hexdigest()
    return hashlib.sha256(f"name:{path}".encode()).hexdigest()


def stage_key(parts: Mapping[str, Any]) -> str:
    """The key of a stage: a hash of everything it reads (settings, fingerprints, digests)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunDirectory:
    """One run's directory. Open it with `open()`; then `done(name, key)` tells whether a
    stage can be reused and `stage(name, key)` builds one."""

    def __init__(
        self,
        path: str | Path,
        config: Mapping[str, Any],
        *,
        resume: bool,
        default_of: Callable[[str], Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.config = dict(config)
        self.resume = resume
        self.default_of = default_of  # a setting the stored config lacks compares with this
        self.manifest: dict[str, Any] = {}
        self._rundir = RunDir(
            self.path, kind="taskexpert run", remedy="rerun with --resume, or choose another --out"
        )

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def stage_dir(self, name: str) -> Path:
        return self.path / STAGES_DIR / name

    @property
    def scores_dir(self) -> Path:
        """The bank's scores while select-experts runs: kept apart from the stage's per-attempt
        temp dir, so a run killed while scoring resumes where it stopped."""
        return self.path / STAGES_DIR / "select-experts.scores"

    def holds_model_work(self) -> bool:
        """Whether a failed fresh run leaves something worth resuming: a finished stage beyond
        the split (which is cheap to redo) or bank scores. Otherwise its directory goes."""
        finished = set(self.manifest.get("stages", {})) - {"split"}
        return bool(finished) or (self.scores_dir.is_dir() and any(self.scores_dir.iterdir()))

    def check_reusable(self) -> None:
        """Before anything is written: a directory made with another config is refused without
        --resume (with the first differing key), and one that is not a run is refused."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise InputError("exists and is not a directory", self.path, field="out")
        if not self.manifest_path.exists():
            leftovers = [p for p in self.path.iterdir() if p.name != ".lock"]
            if leftovers:
                raise InputError(
                    "not empty and not a taskexpert run directory (no manifest.json); "
                    "choose another --out",
                    self.path,
                    field="out",
                )
            return
        stored = self._read_manifest()
        if self.resume:
            return
        changes = identity_changes(stored.get("config", {}), self.config, self.default_of)
        if changes:
            first = changes[0]
            raise InputError(
                f"this run directory was made with another config ({first.key}: "
                f"{first.before!r}, now {first.after!r}); rerun with --resume to reuse what "
                "still applies, or choose another --out",
                self.manifest_path,
                field=first.key,
            )

    def _read_manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the run manifest: {exc}", self.manifest_path) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(
                f"not a run manifest of format {FORMAT}; choose another --out", self.manifest_path
            )
        return data

    @contextlib.contextmanager
    def open(self, inputs: Mapping[str, str], seeds: list[int]) -> Iterator[RunDirectory]:
        """Lock the directory for the run and (re)write the manifest's header. A killed
        attempt's stage temp dirs (each attempt builds in a new one) go with the lock held."""
        self.check_reusable()
        with self._rundir.open(worth_keeping=self.holds_model_work):
            clear_leftovers(self.path / STAGES_DIR)
            old = self._read_manifest() if self.manifest_path.exists() else {}
            self.manifest = {
                "format": FORMAT,
                "created": old.get("created", _now()),
                "updated": _now(),
                "config": self.config,
                "versions": package_versions(),
                "inputs": dict(inputs),
                "seeds": list(seeds),
                "stages": old.get("stages", {}),
            }
            self._save()
            yield self

    def _save(self) -> None:
        self.manifest["updated"] = _now()
        write_json(self.manifest_path, self.manifest)

    def done(self, name: str, key: str) -> bool:
        """The stage finished with this key and its files are intact (checked by checksum)."""
        record = self.manifest.get("stages", {}).get(name)
        directory = self.stage_dir(name)
        if not record or record.get("key") != key or not (directory / MARKER).exists():
            return False
        try:
            check_marker(directory, {"key": key}, "stage")
        except CorruptStep as exc:
            log.warning("rerunning stage %s: %s", name, exc.reason)
            return False
        return True

    def digest(self, name: str) -> str:
        """The output digest of a finished stage: a hash of its marker (every file's sha256)."""
        marker = self.stage_dir(name) / MARKER
        return hashlib.sha256(marker.read_bytes()).hexdigest()[:20]

    @contextlib.contextmanager
    def stage(self, name: str, key: str) -> Iterator[Path]:
        """Build stage `name` in a temp directory, renamed into place whole when the block
        succeeds; its wall time and peak memory go into the manifest."""
        from taskexpert.meter import measure

        remove_tree(self.stage_dir(name))  # an outdated or corrupt version
        self.stage_dir(name).parent.mkdir(parents=True, exist_ok=True)
        started = _now()
        with measure() as meter, self._rundir.step(Path(STAGES_DIR) / name, {"key": key}) as tmp:
            yield tmp
        self.manifest.setdefault("stages", {})[name] = {
            "key": key,
            "started": started,
            "finished": _now(),
            **meter.as_dict(),
        }
        self._save()

    def record(self, key: str, value: Any) -> None:
        """Write one extra fact (say the leakage counts) into the manifest under `key`."""
        self.manifest[key] = value
        self._save()

    def drop_stale(self, keep: set[str]) -> None:
        """Forget stages this config no longer has (a method removed from the list)."""
        stages = self.manifest.get("stages", {})
        for name in [n for n in stages if n not in keep]:
            del stages[name]
            remove_tree(self.stage_dir(name))
        self._save()
