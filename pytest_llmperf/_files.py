"""Writing files atomically: a temporary file beside the target, then a rename. The package's one writer.

Readers (CI artifact collectors, a second xdist session, a server waiting for its model) never see half a file,
and a failed write leaves the previous file as it was. :func:`replacing` is the mechanism; the ``write_*``
functions are its common uses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def file_mode() -> int:
    """The mode an ordinary new file gets here: 0666 less the umask (``mkstemp`` alone would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def replacing(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write (it exists, empty); it becomes ``path`` when the block ends, and
    is removed if the block raises.

    A path rather than an open file, since some writers open the file themselves (the GGUF writer). With
    ``durable`` the data reach the disk before the rename, so a crash cannot leave an empty file in place of
    a good one: for files that are committed (baselines), not for ones a rerun rewrites.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:  # fsync needs a descriptor that may write on some systems
                os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())  # mkstemp's 0600 would make shared and committed files private to one user
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    with replacing(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str, *, durable: bool = False) -> None:
    """``text`` as UTF-8 with ``\\n`` line ends on every platform (reports and baselines are diffed and committed)."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: Path, document: Any) -> None:
    write_text_atomic(path, json.dumps(jsonable(document), indent=1, allow_nan=False, default=str))


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf"), since strict JSON has no infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
