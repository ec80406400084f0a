"""Adapter fetching (local and offline Hub cache), model cards and push, without any network."""

from __future__ import annotations

import huggingface_hub
import pytest
from huggingface_hub import ModelCard, constants

from cli_support import fill_hub_cache, write_adapter_metadata
from spai_hf import hub


@pytest.fixture
def adapter_dir(tmp_path):
    folder = write_adapter_metadata(tmp_path / "sdxl", generator="SDXL 1.0", threshold=0.37, fingerprint="fp-a")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    return folder


def test_read_adapter_info_from_folder(adapter_dir):
    info = hub.read_adapter_info(adapter_dir)
    assert info.path == adapter_dir
    assert (info.generator, info.threshold) == ("SDXL 1.0", 0.37)
    assert info.validation_metrics == {"roc_auc": 0.9, "accuracy": 0.75}


def test_base_fingerprint_digest_identifies_the_base(tmp_path):
    def digest(name, base):
        return hub.read_adapter_info(write_adapter_metadata(tmp_path / name, generator="g", threshold=None,
                                                            fingerprint=base)).base_fingerprint

    same_a, same_b, other = digest("a", "base-1"), digest("b", "base-1"), digest("c", "base-2")
    assert len(same_a) == 16 and int(same_a, 16) >= 0
    assert same_a == same_b != other


def test_folder_without_config_is_not_an_adapter(tmp_path):
    with pytest.raises(hub.AdapterNotFoundError, match="adapter_config.json"):
        hub.fetch_adapter(tmp_path)
    with pytest.raises(hub.AdapterNotFoundError, match="not a folder and not a Hub repository id"):
        hub.fetch_adapter(str(tmp_path / "missing"))


def test_hub_id_resolves_from_offline_cache(adapter_dir, tmp_path, monkeypatch):
    assert constants.HF_HUB_OFFLINE  # set by conftest: nothing may go to the network
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    snapshot = fill_hub_cache(cache, "someone/sdxl-adapter", adapter_dir)
    info = hub.read_adapter_info("someone/sdxl-adapter")
    assert info.path.resolve() == snapshot.resolve()
    assert info.threshold == 0.37
    with pytest.raises(hub.AdapterNotFoundError, match="someone/not-cached.*HF_HUB_OFFLINE"):
        hub.fetch_adapter("someone/not-cached")


def test_model_card_metadata_and_body(adapter_dir):
    card = hub.build_model_card(hub.read_adapter_info(adapter_dir), "me/sdxl", base_model="org/spai-base")
    parsed = ModelCard(str(card))  # a fresh parse of the written text, as the Hub would do
    data = parsed.data.to_dict()
    assert data["base_model"] == "org/spai-base"
    assert data["base_model_relation"] == "adapter"
    assert data["library_name"] == "peft"
    assert data["pipeline_tag"] == "image-classification"
    assert "sdxl-1.0" in data["tags"]
    assert "| roc_auc | 0.9000 |" in parsed.text
    assert "runtime" not in parsed.text  # run statistics are not metrics
    assert "0.3700" in parsed.text and "| data | `data/train.csv` |" in parsed.text
    assert "| train_rows | `120` |" in parsed.text
    assert 'PeftModel.from_pretrained(base, "me/sdxl")' in parsed.text


def test_model_card_needs_a_hub_base_model(adapter_dir):
    with pytest.raises(ValueError, match="--base-model"):
        hub.build_model_card(hub.read_adapter_info(adapter_dir), "me/sdxl")


def test_push_dry_run_writes_card_and_lists_files(adapter_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", pytest.fail)
    result = hub.push_adapter(adapter_dir, "me/sdxl", dry_run=True, base_model="org/spai-base")
    assert result.url is None
    assert result.files == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "metrics.json", "training_args.json"
    ]
    assert ModelCard.load(result.card_path).data.base_model == "org/spai-base"


def test_push_uploads_through_hf_api(adapter_dir, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        calls["upload"] = kwargs

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    result = hub.push_adapter(adapter_dir, "me/sdxl", private=True, base_model="org/spai-base")
    assert calls["create"] == ("me/sdxl", {"private": True, "exist_ok": True})
    assert calls["upload"]["repo_id"] == "me/sdxl"
    assert calls["upload"]["folder_path"] == adapter_dir
    assert "checkpoint-*/**" in calls["upload"]["ignore_patterns"]
    assert result.url == "https://huggingface.co/me/sdxl"


def test_push_never_overwrites_a_foreign_readme(adapter_dir):
    (adapter_dir / "README.md").write_text("my own notes")
    with pytest.raises(FileExistsError, match="not written by spai-svd"):
        hub.push_adapter(adapter_dir, "me/sdxl", dry_run=True, base_model="org/spai-base")
    assert (adapter_dir / "README.md").read_text() == "my own notes"
