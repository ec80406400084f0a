"""The adapter registry: add/list/remove/resolve, relative storage, Hub ids from the offline cache, atomicity."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import constants

from cli_support import fill_hub_cache, write_adapter_metadata
from spai_hf.hub import AdapterNotFoundError, read_adapter_info
from spai_hf.registry import AdapterRegistry, default_registry_path


@pytest.fixture
def registry(tmp_path):
    return AdapterRegistry(tmp_path / "adapters" / "registry.json")


def test_add_list_resolve_remove(registry, tmp_path):
    inside = write_adapter_metadata(registry.root / "sdxl", generator="sdxl", threshold=0.4, fingerprint="fp1")
    outside = write_adapter_metadata(tmp_path / "elsewhere" / "flux", generator="flux", threshold=None)
    registry.add("sdxl", str(inside))
    registry.add("flux", str(outside))
    stored = json.loads(registry.path.read_text())["adapters"]
    assert stored["sdxl"]["source"] == "sdxl"  # inside the registry folder: kept relative, the folder can move
    assert stored["flux"]["source"] == str(outside.resolve())
    entries = registry.entries()
    assert (entries["sdxl"].generator, entries["sdxl"].threshold) == ("sdxl", 0.4)
    assert entries["sdxl"].base_fingerprint == read_adapter_info(inside).base_fingerprint is not None
    assert entries["sdxl"].metrics == {"roc_auc": 0.9, "accuracy": 0.75}
    assert entries["flux"].threshold is None

    resolved = registry.resolve("sdxl")
    assert (resolved.name, resolved.path.resolve(), resolved.threshold) == ("sdxl", inside.resolve(), 0.4)
    by_path = registry.resolve(str(outside))
    assert (by_path.name, by_path.generator) == ("flux", "flux")

    registry.remove("flux")
    assert list(registry.entries()) == ["sdxl"]
    assert outside.is_dir()  # unregistering never deletes the adapter
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'flux'"):
        registry.remove("flux")


def test_duplicate_and_invalid_names(registry):
    first = write_adapter_metadata(registry.root / "a", generator="one", threshold=0.1)
    second = write_adapter_metadata(registry.root / "b", generator="two", threshold=0.2)
    registry.add("gen", str(first))
    before = registry.path.read_text()
    with pytest.raises(FileExistsError, match="already registered"):
        registry.add("gen", str(second))
    with pytest.raises(ValueError, match="adapter name"):
        registry.add("bad name/", str(second))
    assert registry.path.read_text() == before
    registry.add("gen", str(second), force=True)
    assert registry.entries()["gen"].generator == "two"


def test_unknown_reference_lists_known_names(registry):
    registry.add("sdxl", str(write_adapter_metadata(registry.root / "sdxl", generator="sdxl", threshold=0.5)))
    with pytest.raises(AdapterNotFoundError, match=r"'nope' is not a registered name \(sdxl\)"):
        registry.resolve("nope")


def test_hub_entry_resolves_from_offline_cache(registry, tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    snapshot = fill_hub_cache(cache, "org/sdxl-adapter",
                              write_adapter_metadata(tmp_path / "src", generator="sdxl", threshold=0.3))
    pinned = fill_hub_cache(cache, "org/sdxl-adapter", write_adapter_metadata(tmp_path / "v1", generator="sdxl",
                            threshold=0.6), commit="1" * 40, ref="v1")
    entry = registry.add("sdxl", "org/sdxl-adapter")
    assert (entry.kind, entry.source, entry.threshold, entry.revision) == ("hub", "org/sdxl-adapter", 0.3, None)
    assert registry.resolve("sdxl").path.resolve() == snapshot.resolve()
    assert registry.add("sdxl-v1", "org/sdxl-adapter", revision="v1").threshold == 0.6
    resolved = registry.resolve("sdxl-v1")  # the registered revision sticks
    assert (resolved.path.resolve(), resolved.threshold) == (pinned.resolve(), 0.6)


def test_malformed_registry_is_reported(registry):
    registry.path.parent.mkdir(parents=True)
    registry.path.write_text("{not json")
    with pytest.raises(ValueError, match="malformed"):
        registry.entries()


def test_default_path_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPAI_SVD_REGISTRY", str(tmp_path / "r.json"))
    assert default_registry_path() == tmp_path / "r.json"
    monkeypatch.delenv("SPAI_SVD_REGISTRY")
    assert str(default_registry_path()) == "adapters/registry.json"
