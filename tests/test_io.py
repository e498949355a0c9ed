"""Atomic writes: a directory is replaced or removed so that no kill leaves it half there."""

from __future__ import annotations

import os
import shutil

import pytest

from taskexpert.io import atomic_dir, atomic_open, is_temp_name, remove_tree


def tree(path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): p.read_text() for p in path.rglob("*") if p.is_file()}


def make(path, files: dict[str, str]):
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)


def test_replacing_a_directory_never_shows_it_half_deleted(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    make(target, {"a.txt": "old a", "sub/b.txt": "old b"})
    seen = []
    real_rmtree = shutil.rmtree

    def watching_rmtree(path, *args, **kwargs):
        seen.append((os.path.basename(path), tree(target) if target.exists() else None))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", watching_rmtree)
    with atomic_dir(target) as tmp:
        make(tmp, {"a.txt": "new a"})
    # the old directory was deleted under a temp name, the new one already in place
    assert seen == [(seen[0][0], {"a.txt": "new a"})] and is_temp_name(seen[0][0])
    assert tree(target) == {"a.txt": "new a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_failed_replacement_keeps_the_old_directory(tmp_path, monkeypatch):
    target = tmp_path / "out"
    make(target, {"a.txt": "old"})
    real_replace = os.replace

    def failing_replace(src, dst):
        new_one = not os.path.basename(src).endswith(".old.tmp")
        if new_one and os.fspath(dst) == os.fspath(target) and os.fspath(src) != os.fspath(target):
            raise OSError("disk gone")  # renaming the new directory into place fails
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"), atomic_dir(target) as tmp:
        make(tmp, {"a.txt": "new"})
    assert tree(target) == {"a.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_remove_tree_renames_before_deleting(tmp_path, monkeypatch):
    target = tmp_path / "work"
    make(target, {"run.json": "{}", "checkpoint/state.pt": "x"})

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # the process dies while deleting

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_tree(target)
    assert not target.exists()  # gone under its own name in one step
    (left,) = tmp_path.iterdir()
    assert is_temp_name(left.name) and tree(left) == {"run.json": "{}", "checkpoint/state.pt": "x"}
    monkeypatch.undo()
    remove_tree(tmp_path / "absent")  # nothing there: nothing to do


def test_temp_names():
    assert is_temp_name(".model.ab12.tmp") and is_temp_name(".ckpt.1234abcd.old.tmp")
    assert not is_temp_name("model.tmp") and not is_temp_name(".lock")


def test_atomic_open_leaves_only_a_temp_name_while_writing(tmp_path):
    path = tmp_path / "data.jsonl"
    with atomic_open(path) as handle:
        handle.write("line\n")
        assert not path.exists()
        assert all(is_temp_name(p.name) for p in tmp_path.iterdir())
    assert path.read_text() == "line\n" and list(tmp_path.iterdir()) == [path]
