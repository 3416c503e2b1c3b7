"""Atomic file writes: write a temporary file beside the target, then rename it into place."""

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then rename tmp_path to `path`; a crash leaves no partial `path`.
    The file gets the mode any other new file would (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_folder_atomically(path: Path, fill: Callable[[Path], None]) -> None:
    """Call `fill(tmp_folder)`, then put tmp_folder in the place of the folder `path` (replacing an
    earlier one): a failure in `fill` leaves `path` as it was. Its files get the mode of any new file
    (libraries that write through their own temporary files leave mkstemp's private 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    old = None
    try:
        fill(tmp)
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                os.chmod(file, 0o666 & ~_umask())
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():  # rename(2) replaces an empty folder only: move the earlier one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)
            old = None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
