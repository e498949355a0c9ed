"""One run directory for every run: lock, identity, atomic steps with checked markers, resume.

A run (a DiverseEvol run, later train-moe and the testbed build) writes into one directory and
may be killed at any moment. What makes its rerun safe is the same everywhere, so it lives
here once (docs/design.md, "Layering"):

- **Lock** (`lock`): an `fcntl` lock on `<dir>/.lock`, held for the whole run. The kernel
  drops it when the process dies, so a killed run never blocks its rerun; the lock file stays.
  A second live process is refused (`wait=False`) or waits (`wait=True`).
- **Identity** (`RunDir.check_identity`, `RunDir.record_identity`): `run.json` holds a format
  version, what decides the results (the config plus content hashes of the inputs) and the
  package version. A rerun whose identity differs is refused and told what changed
  (`--lr 5e-05, now 0.001`), unless the caller starts over.
- **Steps** (`RunDir.step`, `check_marker`, `RunDir.finished_steps`): a step's directory is
  built under a temp name and renamed into place whole (`io.atomic_dir`); its last file is a
  marker (`COMPLETE.json`) with size and sha256 of every file. A step counts only with a
  marker whose checksums match; a step without a marker (a kill between steps) is discarded
  with the later ones; one whose files changed afterwards is an error, never trusted.
- **Steps in place** (`RunDir.step_in_place`, `RunDir.finished_in_place`, `RunDir.forget`):
  for a run whose outputs must sit at fixed paths that other code reads (the testbed's
  `base/`, `bank/<adapter>/`, `pool.jsonl`): the step writes its outputs itself, each
  atomically, and the marker goes to `.steps/<name>/COMPLETE.json`, listing size and sha256
  of every output file by its path in the run directory. Same rule: no marker, not finished.
- **Leftovers** (`clear_leftovers`): temp entries (`io.is_temp_name`) of a killed run, removed
  while holding the lock, so no live writer owns them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir, is_temp_name, remove_tree, write_json

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
IDENTITY_FILE = "run.json"
MARKER = "COMPLETE.json"
STEPS_DIR = ".steps"  # markers of steps built in place (`RunDir.step_in_place`)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks (pools and weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    """A JSON file of the run, or an InputError naming it (never a traceback)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JSON: {exc}", path) from None


# ---- lock ------------------------------------------------------------------------------------


@contextlib.contextmanager
def lock(directory: str | Path, *, wait: bool = False, what: str = "run") -> Iterator[None]:
    """Hold `<directory>/.lock` exclusively for the block.

    `wait=False`: another live holder is an error ("another {what} is using this directory");
    `wait=True`: block until it is done (a second testbed build then finds the first's result).
    A dead holder never counts: the kernel releases an flock with its process.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise InputError(f"another {what} is using this directory", directory) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clear_leftovers(directory: str | Path, *, recursive: bool = False) -> int:
    """Remove the temp files and directories a killed run left in `directory` (or below it);
    call only while holding the run's lock. Returns how many entries went."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for entry in list(directory.iterdir()):
        if is_temp_name(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        elif recursive and entry.is_dir() and not entry.is_symlink():
            removed += clear_leftovers(entry, recursive=True)
    return removed


# ---- identity --------------------------------------------------------------------------------


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class Change:
    """One setting that differs between the stored identity and a rerun's."""

    key: str
    before: Any
    after: Any

    def describe(self, name: Callable[[str], str] | None = None) -> str:
        """`--lr 5e-05, now 0.001` (an input's hash reads as `content`)."""
        label = name(self.key) if name else self.key
        what = "content " if self.key.endswith("sha256") else ""
        return f"{label} {what}{self.before!r}, now {self.after!r}"


def value_before(name: str, model: Any, added_later: Mapping[str, object]) -> object:
    """The value a run made before setting `name` existed had for it, for `default_of`: its
    `added_later` value (what runs used before it was recorded; today's default may differ),
    else the default of `model`'s field (a pydantic model class); None where neither."""
    if name in added_later:
        return added_later[name]
    found = model.model_fields.get(name) if model is not None else None
    if found is None or found.is_required():
        return None
    return found.get_default(call_default_factory=True)


def identity_changes(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    default_of: Callable[[str], Any] | None = None,
) -> list[Change]:
    """The settings that differ, by dotted key, sorted. A key the stored identity lacks
    compares with `default_of(key)`: a run started before a setting existed still resumes as
    long as the setting keeps its default."""
    old, new = flatten(stored), flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        before = old[key] if key in old else (default_of(key) if default_of else None)
        if before != new.get(key):
            changes.append(Change(key, before, new.get(key)))
    return changes


# ---- step markers ----------------------------------------------------------------------------


class CorruptStep(InputError):
    """A finished step whose files no longer match its marker."""


def write_marker(directory: str | Path, meta: Mapping[str, Any]) -> None:
    """Write `COMPLETE.json` (`meta` plus size and sha256 of every file below `directory`);
    written last, so its presence means every other file of the step is whole."""
    directory = Path(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / MARKER):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    write_json(directory / MARKER, {**meta, "files": files})


def check_marker(directory: str | Path, meta: Mapping[str, Any], noun: str = "step") -> dict:
    """The marker of a finished step after checking its `meta` and every listed file against
    its size and sha256; `CorruptStep` names the first file that differs."""
    directory = Path(directory)
    path = directory / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        files = marker["files"]
        if not isinstance(files, dict) or any(marker.get(k) != v for k, v in meta.items()):
            raise ValueError("marker does not describe this step")
    except (OSError, ValueError, KeyError, TypeError):
        reason = "its completion marker is unreadable"
        raise CorruptStep(corrupt_message(noun, reason), path) from None
    for rel, expected in files.items():
        file = directory / rel
        if not file.is_file():
            raise CorruptStep(corrupt_message(noun, f"a file listed in {MARKER} is missing"), file)
        if file.stat().st_size != expected["size"] or file_sha256(file) != expected["sha256"]:
            reason = f"the file changed after the {noun} finished"
            raise CorruptStep(corrupt_message(noun, reason), file)
    return marker


def corrupt_message(noun: str, reason: str) -> str:
    """Why a finished step cannot be trusted, and what to do about it."""
    return (
        f"corrupted {noun}: {reason}; delete this {noun} directory and the later ones "
        "to recompute them"
    )


# ---- the run directory -----------------------------------------------------------------------


@dataclass
class RunDir:
    """A run directory: `kind` names the run in messages ("diverseevol"), `version` the
    on-disk format (a run file of another version is refused by name), `noun` what a step is
    called ("round"), `remedy` what a refused rerun should do instead."""

    path: Path
    kind: str
    version: int = 1
    noun: str = "step"
    remedy: str = "rerun with the same arguments to resume, or choose another --out"

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @contextlib.contextmanager
    def open(
        self, *, wait: bool = False, worth_keeping: Callable[[], bool] | None = None
    ) -> Iterator[RunDir]:
        """Create (if needed) and lock the directory, clear a killed run's temp leftovers at
        its top level. A directory this call creates goes again if the block fails before the
        identity is recorded (a bad --base, say) and `worth_keeping` (if given) says nothing
        in it is worth resuming yet."""
        fresh = not self.path.exists()
        try:
            with lock(self.path, wait=wait, what=f"{self.kind} run"):
                clear_leftovers(self.path)
                yield self
        except BaseException:
            keep = self.identity_path.exists() or (worth_keeping is not None and worth_keeping())
            if fresh and not keep:
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def stored_identity(self) -> dict | None:
        """The identity run.json holds, None for a new run; another format version is refused
        with both versions named (the run directory was written by other code)."""
        if not self.identity_path.exists():
            return None
        stored = read_json(self.identity_path)
        version = stored.get("version") if isinstance(stored, dict) else None
        if version != self.version or not isinstance(stored.get("identity"), dict):
            raise InputError(
                f"not a {self.kind} run file of format version {self.version} (it has "
                f"{version!r}, written by another taskexpert version); {self.remedy}",
                self.identity_path,
            )
        found = stored.get("taskexpert")
        from taskexpert import __version__

        if found is not None and found != __version__:
            log.warning(
                "%s was started by taskexpert %s, this is %s", self.path, found, __version__
            )
        return stored["identity"]

    def changes(
        self, identity: Mapping[str, Any], default_of: Callable[[str], Any] | None = None
    ) -> list[Change] | None:
        """How `identity` differs from the stored one; None when nothing is stored yet."""
        stored = self.stored_identity()
        return None if stored is None else identity_changes(stored, identity, default_of)

    def check_identity(
        self,
        identity: Mapping[str, Any],
        *,
        option_name: Callable[[str], str] | None = None,
        default_of: Callable[[str], Any] | None = None,
    ) -> None:
        """Refuse a rerun that asks for something other than what the directory holds; the
        message names the first differing setting by its option (`option_name`) with both
        values."""
        changes = self.changes(identity, default_of)
        if changes:
            first = changes[0]
            label = option_name(first.key) if option_name else first.key
            what = "content" if first.key.endswith("sha256") else "value"
            raise InputError(
                f"this run directory was started with a different {label} "
                f"({what} {first.before!r}, now {first.after!r}); {self.remedy}",
                self.identity_path,
                field=label,
            )

    def reset(self) -> None:
        """Start over: remove everything but the lock file (held by this process, so the
        directory itself stays, and with it the lock another process would have to wait on)."""
        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                remove_tree(entry)
            else:
                entry.unlink(missing_ok=True)

    def record_identity(self, identity: Mapping[str, Any], **extra: Any) -> None:
        """Store a new run's identity (once it is known to be runnable); kept as it is on
        resume, so run.json always describes the run that started the directory."""
        if self.identity_path.exists():
            return
        from taskexpert import __version__

        document = {"version": self.version, "identity": dict(identity)}
        write_json(self.identity_path, document | {"taskexpert": __version__} | extra)

    @contextlib.contextmanager
    def step(self, relpath: str | Path, meta: Mapping[str, Any]) -> Iterator[Path]:
        """Build one step's directory: yields a temp directory; on success the marker is
        written into it last and it is renamed to `relpath` (whole, or not at all)."""
        with atomic_dir(self.path / relpath) as tmp:
            yield tmp
            write_marker(tmp, meta)

    def finished_steps(self, relpath: str | Path, meta_key: str) -> list[Path]:
        """The finished, checked steps `relpath/NN` (numbered 0, 1, ...), in order.

        Temp leftovers go first. A numbered directory without a marker is an interrupted
        step: it and every later one are discarded (rerun). A gap in the numbering or a marker
        whose checksums fail is an error: something outside the run changed the directory.
        """
        parent = self.path / relpath
        if not parent.is_dir():
            return []
        clear_leftovers(parent)
        present = {
            int(entry.name): entry
            for entry in parent.iterdir()
            if entry.is_dir() and re.fullmatch(r"\d+", entry.name)
        }
        finished: list[Path] = []
        for index in sorted(present):
            directory = present[index]
            if index != len(finished):
                raise InputError(
                    f"{self.noun} {index} exists but {self.noun} {len(finished)} does not; "
                    f"delete the later {self.noun}s to recompute them",
                    directory,
                )
            if not (directory / MARKER).exists():
                log.warning("discarding %s: no completion marker (interrupted)", directory)
                for later in sorted(i for i in present if i >= index):
                    remove_tree(present[later])
                break
            check_marker(directory, {meta_key: index}, self.noun)
            finished.append(directory)
        return finished

    # ---- steps built in place ------------------------------------------------------------

    def marker_path(self, name: str | Path) -> Path:
        """Where the marker of the in-place step `name` lives: `.steps/<name>/COMPLETE.json`."""
        return self.path / STEPS_DIR / name / MARKER

    @contextlib.contextmanager
    def step_in_place(
        self,
        name: str | Path,
        meta: Mapping[str, Any],
        outputs: list[str | Path] | None = None,
    ) -> Iterator[Path]:
        """One step whose outputs stay where the block writes them (each written atomically
        by the block): `outputs` are paths in the run directory, files or directories
        (default: `name` itself); yields the run directory's path. The step's old marker goes
        first (the block may replace what it described); on success a new marker holds
        `meta` (read as the block ends, so the block may add its record to it) and size and
        sha256 of every output file, written last. A block that fails leaves no marker."""
        self.forget(name, nested=False)
        yield self.path
        files = {}
        for output in outputs if outputs is not None else [name]:
            target = self.path / output
            found = [target] if target.is_file() else sorted(target.rglob("*"))
            for path in found:
                if path.is_file() and not is_temp_name(path.name):
                    rel = path.relative_to(self.path).as_posix()
                    files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
        write_json(self.marker_path(name), {**meta, "files": files})

    def finished_in_place(
        self, name: str | Path, meta: Mapping[str, Any], *, strict: bool = True
    ) -> dict | None:
        """The marker of a finished in-place step, after checking `meta` and every listed
        file; None when there is no marker. A file that is missing or changed raises
        `CorruptStep` (`strict`), or (not strict) forgets the step and returns None, so the
        caller reruns it."""
        path = self.marker_path(name)
        if not path.exists():
            return None
        try:
            marker = read_json(path)
            files = marker["files"]
            if not isinstance(files, dict) or any(marker.get(k) != v for k, v in meta.items()):
                raise ValueError("marker does not describe this step")
        except (InputError, ValueError, KeyError, TypeError):
            if not strict:
                log.warning("%s: unreadable completion marker, rerunning the step", path)
                self.forget(name, nested=False)
                return None
            reason = "its completion marker is unreadable"
            raise CorruptStep(corrupt_message(self.noun, reason), path) from None
        for rel, expected in files.items():
            file = self.path / rel
            if not file.is_file():
                reason = f"a file listed in {MARKER} is missing"
            elif file.stat().st_size != expected["size"] or file_sha256(file) != expected["sha256"]:
                reason = f"the file changed after the {self.noun} finished"
            else:
                continue
            if strict:
                raise CorruptStep(corrupt_message(self.noun, reason), file)
            log.warning("%s: %s; rerunning %s %s", file, reason, self.noun, name)
            self.forget(name, nested=False)
            return None
        return marker

    def forget(self, name: str | Path, *, nested: bool = True) -> None:
        """The in-place step `name` is no longer finished: its marker goes, and with `nested`
        the markers of the steps inside it (`bank` takes `bank/<adapter>` along). The step's
        outputs stay: removing them is the caller's business."""
        if nested:
            remove_tree(self.path / STEPS_DIR / name)
        else:
            self.marker_path(name).unlink(missing_ok=True)
