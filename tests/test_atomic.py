"""Atomic writes: all or nothing, with the permissions of any other new file."""

import os

import pytest

from starfish_cli.runtime.atomic import write_text_atomically


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text_atomically(tmp_path / "report.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == mode


def test_a_failed_write_leaves_nothing(tmp_path):
    def fail(_tmp):
        raise RuntimeError("disk full")

    from starfish_cli.runtime.atomic import write_atomically

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "pruned.safetensors", fail)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    from starfish_cli.runtime.atomic import write_folder_atomically

    def fill(folder, text):
        write_text_atomically(folder / "model.json", text)

    def fail(folder):
        fill(folder, "half")
        raise RuntimeError("export failed")

    write_folder_atomically(tmp_path / "export", lambda folder: fill(folder, "first"))
    (tmp_path / "export" / "stale.onnx").write_text("old")
    write_folder_atomically(tmp_path / "export", lambda folder: fill(folder, "second"))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["model.json"]
    with pytest.raises(RuntimeError):
        write_folder_atomically(tmp_path / "export", fail)
    assert (tmp_path / "export" / "model.json").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
