"""The `spai-svd` command surface: --help everywhere, the adapters subcommands, push --dry-run, clear errors."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from cli_support import run_cli, write_adapter_metadata
from spai_hf.cli import main

SUBCOMMANDS = [
    ["convert"], ["make-csv"], ["train"], ["test"], ["infer"], ["push"], ["make-demo-data"], ["demo"],
    ["adapters"], ["adapters", "list"], ["adapters", "add"], ["adapters", "remove"],
]

PEFT_TEMPLATE = """---
library_name: peft
---

# Model Card for Model ID

- **Developed by:** [More Information Needed]
"""


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_help_on_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spai-svd " + " ".join(command))


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("convert", "make-csv", "train", "test", "infer", "adapters", "push"):
        assert f"    {name} " in out


def test_adapters_add_list_remove(tmp_path, capsys):
    registry = tmp_path / "adapters" / "registry.json"
    adapter = write_adapter_metadata(tmp_path / "adapters" / "sdxl", generator="sdxl", threshold=0.42, auc=0.97)
    assert main(["adapters", "list", "--registry", str(registry)]) == 0
    assert "no adapters registered" in capsys.readouterr().out
    assert main(["adapters", "add", "sdxl", str(adapter), "--registry", str(registry)]) == 0
    assert "registered 'sdxl'" in capsys.readouterr().out
    assert main(["adapters", "add", "sdxl", str(adapter), "--registry", str(registry)]) == 1
    assert "already registered" in capsys.readouterr().err
    assert main(["adapters", "list", "--registry", str(registry)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "generator", "threshold", "roc_auc", "kind", "source"]
    assert table[2].split() == ["sdxl", "sdxl", "0.4200", "0.9700", "local", "sdxl"]
    assert main(["adapters", "list", "--json", "--registry", str(registry)]) == 0
    assert json.loads(capsys.readouterr().out)["sdxl"]["threshold"] == 0.42
    assert main(["adapters", "remove", "sdxl", "--registry", str(registry)]) == 0
    assert main(["adapters", "remove", "sdxl", "--registry", str(registry)]) == 1
    assert "no adapter named 'sdxl'" in capsys.readouterr().err
    assert adapter.is_dir()


def test_clear_errors_before_any_model_is_loaded(tmp_path, capsys):
    registry = ["--registry", str(tmp_path / "registry.json")]
    image = tmp_path / "x.png"
    assert main(["infer", "--base", "b", "--adapter", "nosuch", str(image), "--output", "o.csv", *registry]) == 1
    assert "'nosuch' is not a registered name" in capsys.readouterr().err
    assert main(["infer", "--base", "b", str(tmp_path / "*.png"), "--output", "o.csv", *registry]) == 1
    assert "no file matches" in capsys.readouterr().err
    assert main(["test", "--base", "b", "--data", str(tmp_path / "missing.csv"), *registry]) == 1
    assert "missing.csv" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_push_dry_run_writes_a_card_the_hub_parses(tmp_path):
    adapter = write_adapter_metadata(tmp_path / "sdxl", generator="SDXL", threshold=0.42)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "README.md").write_text(PEFT_TEMPLATE)  # PEFT's unfilled template is replaced, nothing else is
    (adapter / "checkpoint-3").mkdir()
    (adapter / "checkpoint-3" / "optimizer.pt").write_bytes(b"state")
    result = run_cli("push", adapter, "--repo-id", "me/spai-sdxl", "--base-model", "org/spai", "--dry-run",
                     "--private")
    assert result.returncode == 0, result.stderr
    listed = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == ["README.md", "adapter_config.json", "adapter_model.safetensors", "metrics.json",
                      "training_args.json"]
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model == "org/spai"
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft"
    assert card.data.pipeline_tag == "image-classification"
    assert "sdxl" in card.data.tags
    assert "| roc_auc | 0.9000 |" in card.text and "data/train.csv" in card.text
    assert 'PeftModel.from_pretrained(base, "me/spai-sdxl")' in card.text
