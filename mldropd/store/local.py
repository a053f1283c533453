"""The local-folder artifact store (embedded default)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mldropd.errors import NotFound, Unavailable
from mldropd.store.base import ArtifactStore


class LocalStore(ArtifactStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key {key!r} escapes the store")
        return path

    def _atomic_write(self, key: str, write) -> None:  # type: ignore[no-untyped-def]
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, src: Path) -> None:
        def write(f):  # type: ignore[no-untyped-def]
            with open(src, "rb") as source:
                shutil.copyfileobj(source, f, 1 << 20)

        self._atomic_write(key, write)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"artifact {key} is missing from {self.describe()}")
        shutil.copyfile(src, dest)

    def get_bytes(self, key: str) -> bytes:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"artifact {key} is missing from {self.describe()}")
        return src.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target)
        elif target.is_file():
            target.unlink()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".readyz"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise Unavailable(f"artifact folder {self.root} is not writable: {exc}") from None

    def describe(self) -> str:
        return f"folder {self.root}"
