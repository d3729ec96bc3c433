"""Reading the files a user names: regular files only, capped in size, UTF-8.

Files named inside other files (a protocol's edge list, a bench's calibration) are
read relative to the naming file's folder and must stay inside it: an absolute path,
a ``..`` that leaves the folder, or a symbolic link pointing out of it is refused. So
a shared protocol or bench file can never read the rest of the machine. Devices,
FIFOs and sockets are refused before they are opened (``/dev/zero`` would never end).
The size cap is ``CLLN_MAX_FILE_BYTES`` (default 16 MiB).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from clln.controller.errors import ProtocolError, UserError

DEFAULT_MAX_FILE_BYTES = 16 * 2**20
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


def max_file_bytes() -> int:
    """The size cap of user files, bytes (``CLLN_MAX_FILE_BYTES``)."""
    raw = os.environ.get("CLLN_MAX_FILE_BYTES", "")
    if not raw:
        return DEFAULT_MAX_FILE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"CLLN_MAX_FILE_BYTES: {raw[:40]!r} is not allowed; allowed: a positive "
                        f"number of bytes (default {DEFAULT_MAX_FILE_BYTES})")
    return value


def inside(name: str, base_dir: Path, source: str, key: str) -> Path:
    """The path of a file named by ``key`` in the file ``source``: relative to
    ``base_dir`` and inside it (links resolved); ProtocolError otherwise."""
    path = Path(name)
    if not name or "\x00" in name:
        raise ProtocolError(f"{source}: {key}: not a file name")
    if path.is_absolute():
        raise ProtocolError(f"{source}: {key}: {name[:80]!r} is an absolute path; allowed: a path "
                            f"relative to the file's folder, inside it")
    base = base_dir.resolve()
    full = (base / path).resolve()
    if full != base and base not in full.parents:
        raise ProtocolError(f"{source}: {key}: {name[:80]!r} leaves the file's folder; allowed: a path "
                            f"relative to the file's folder, inside it")
    return base_dir / path


def read_user_bytes(path: str | Path, what: str) -> bytes:
    """A regular file's bytes, at most :func:`max_file_bytes`; one-line ProtocolError
    when it is missing, special, too large or unreadable."""
    path = Path(path)
    cap = max_file_bytes()
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ProtocolError(f"{path}: no such {what} file") from None
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"{path}: cannot read {what} file ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise ProtocolError(f"{path}: is {kind}; a {what} file must be a regular file")
    if info.st_size > cap:
        raise ProtocolError(f"{path}: {info.st_size} bytes, above the {cap}-byte limit for {what} files "
                            f"(set CLLN_MAX_FILE_BYTES to raise it)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(cap + 1)
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read {what} file ({exc.strerror})") from None
    if len(data) > cap:
        raise ProtocolError(f"{path}: above the {cap}-byte limit for {what} files "
                            f"(set CLLN_MAX_FILE_BYTES to raise it)")
    return data


def read_user_text(path: str | Path, what: str) -> str:
    """:func:`read_user_bytes` decoded as UTF-8 (one line naming the first bad byte otherwise)."""
    data = read_user_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                            f"{what} files must be UTF-8") from None
