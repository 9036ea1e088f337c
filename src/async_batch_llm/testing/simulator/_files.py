"""Uploaded and generated files of the OpenAI Files API and the Gemini File API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from async_batch_llm.testing.simulator._request import Provider

__all__ = ["FileStore", "PendingUpload", "StoredFile"]


@dataclass(slots=True)
class StoredFile:
    """One file: its id as the provider writes it, its bytes and what describes it.

    ``source`` is ``"generated"`` for batch output files, which only the provider writes.
    """

    provider: Provider
    id: str
    filename: str
    data: bytes
    created_wall: float
    purpose: str = ""
    mime_type: str = "application/octet-stream"
    source: Literal["uploaded", "generated"] = "uploaded"


@dataclass(slots=True)
class PendingUpload:
    """A Gemini resumable upload that has started but not been finalized."""

    display_name: str
    mime_type: str
    size: int
    name: str | None = None
    data: bytearray = field(default_factory=bytearray)


class FileStore:
    """The files and unfinished resumable uploads of a simulator."""

    __slots__ = ("_files", "uploads")

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self.uploads: dict[str, PendingUpload] = {}

    def clear(self) -> None:
        """Forget every file and upload."""
        self._files.clear()
        self.uploads.clear()

    def add(self, stored: StoredFile) -> StoredFile:
        """Store ``stored`` under its id."""
        self._files[stored.id] = stored
        return stored

    def get(self, provider: Provider, file_id: str) -> StoredFile | None:
        """The file ``file_id`` of ``provider``, or ``None``."""
        found = self._files.get(file_id)
        return found if found is not None and found.provider == provider else None

    def delete(self, provider: Provider, file_id: str) -> bool:
        """Delete the file; ``False`` when there was none."""
        if self.get(provider, file_id) is None:
            return False
        del self._files[file_id]
        return True

    def listing(self, provider: Provider) -> list[StoredFile]:
        """The files of ``provider``, newest first."""
        return [f for f in self._files.values() if f.provider == provider][::-1]
