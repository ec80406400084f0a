"""Named adapters: ``adapters/registry.json`` maps a short name (``sdxl``) to a local folder or a Hub repo id.

Each entry also caches what the adapter says about itself (generator, base fingerprint, validation metrics,
calibrated threshold) so ``spai-svd adapters list`` needs no download. Local folders inside the registry's own
folder are stored relative to it, so the ``adapters/`` folder can be moved or committed as a whole.
The file is rewritten atomically on every change.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .hub import AdapterNotFoundError, is_hub_id, read_adapter_info

__all__ = [
    "DEFAULT_REGISTRY_PATH",
    "REGISTRY_ENV",
    "AdapterRegistry",
    "RegistryEntry",
    "ResolvedAdapter",
    "default_registry_path",
]

REGISTRY_ENV = "SPAI_SVD_REGISTRY"
DEFAULT_REGISTRY_PATH = Path("adapters") / "registry.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def default_registry_path() -> Path:
    """``$SPAI_SVD_REGISTRY`` if set, else ``adapters/registry.json`` under the working directory."""
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY_PATH)


@dataclass
class RegistryEntry:
    """One registered adapter. ``source`` is a folder (relative to the registry's folder or absolute) or Hub id."""

    source: str
    kind: str  # "local" or "hub"
    generator: str | None = None
    base_fingerprint: str | None = None
    threshold: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    revision: str | None = None  # Hub branch, tag or commit (None: the default branch)


@dataclass
class ResolvedAdapter:
    """An ``--adapter`` argument resolved to something PEFT can load, plus its display name and threshold."""

    name: str
    path: Path
    threshold: float | None
    generator: str | None


class AdapterRegistry:
    """Read, edit and resolve the adapter registry stored at ``path``."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_registry_path()

    @property
    def root(self) -> Path:
        """Folder that relative local sources are resolved against."""
        return self.path.parent

    def entries(self) -> dict[str, RegistryEntry]:
        """All entries by name (empty when the registry file does not exist yet)."""
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {name: RegistryEntry(**entry) for name, entry in data["adapters"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"adapter registry {str(self.path)!r} is malformed ({error}); fix or remove it") from None

    def _save(self, entries: dict[str, RegistryEntry]) -> None:
        payload: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "adapters": {name: asdict(entries[name]) for name in sorted(entries)},
        }
        atomic_write_json(self.path, payload)

    def _stored_source(self, ref: str) -> tuple[str, str]:
        """(source as stored, kind) for a folder or Hub id given on the command line."""
        folder = Path(ref).expanduser()
        if folder.is_dir():
            folder = folder.resolve()
            try:
                return folder.relative_to(self.root.resolve()).as_posix(), "local"
            except ValueError:
                return str(folder), "local"
        if is_hub_id(ref):
            return ref, "hub"
        raise AdapterNotFoundError(f"{ref!r} is neither an existing folder nor a Hub repository id (namespace/name)")

    def add(self, name: str, ref: str, *, force: bool = False, revision: str | None = None) -> RegistryEntry:
        """Register ``ref`` under ``name``, reading its metadata (fetched once for a Hub id)."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"adapter name {name!r} must be 1-64 characters of letters, digits, '.', '_' or '-'")
        entries = self.entries()
        if name in entries and not force:
            raise FileExistsError(f"adapter {name!r} is already registered ({entries[name].source}); use --force")
        source, kind = self._stored_source(ref)
        info = read_adapter_info(ref, revision)
        entry = RegistryEntry(
            source=source,
            kind=kind,
            generator=info.generator,
            base_fingerprint=info.base_fingerprint,
            threshold=info.threshold,
            metrics=info.validation_metrics,
            revision=revision if kind == "hub" else None,
        )
        entries[name] = entry
        self._save(entries)
        return entry

    def remove(self, name: str) -> RegistryEntry:
        """Unregister ``name`` (the adapter files themselves are left untouched)."""
        entries = self.entries()
        if name not in entries:
            raise AdapterNotFoundError(f"no adapter named {name!r} in {str(self.path)!r}")
        entry = entries.pop(name)
        self._save(entries)
        return entry

    def resolve(self, ref: str, revision: str | None = None) -> ResolvedAdapter:
        """Resolve a registered name, else a local folder, else a Hub id, to a loadable local folder.

        ``revision`` applies to a Hub id given directly; a registered Hub entry uses the revision it was added with.
        """
        entries = self.entries()
        if ref in entries:
            entry = entries[ref]
            source = entry.source if entry.kind == "hub" else str(self.root / entry.source)
            info = read_adapter_info(source, entry.revision)
            return ResolvedAdapter(name=ref, path=info.path, threshold=info.threshold, generator=info.generator)
        if not Path(ref).expanduser().is_dir() and not is_hub_id(ref):
            known = ", ".join(sorted(entries)) or "none registered"
            raise AdapterNotFoundError(
                f"adapter {ref!r} is not a registered name ({known}), an adapter folder or a Hub repository id"
            )
        info = read_adapter_info(ref, revision)
        return ResolvedAdapter(
            name=_display_name(ref), path=info.path, threshold=info.threshold, generator=info.generator
        )


def _display_name(ref: str) -> str:
    """Short column-friendly name for an unregistered adapter: the folder or repository name."""
    return Path(ref.rstrip("/\\")).name or ref

