"""Tests for spai_hf.training on a tiny SPAI model and a small generated dataset.

Covers: two data-parallel CPU processes under torchrun (world size 2 recorded, adapter loads onto the base, loss falls,
validation metrics logged), exact resumption, early failure on bad CSVs, config files.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import ViTConfig

from spai_hf.configuration_spai import SpaiConfig
from spai_hf.modeling_spai import SpaiForImageClassification
from spai_hf.training import TrainingConfig, main, parse_config, train

REPO = Path(__file__).resolve().parents[1]
ADAPTER_FILE = "adapter_model.safetensors"


def _tiny_base(path: Path) -> Path:
    torch.manual_seed(0)
    backbone = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        layer_norm_eps=1e-6,
    )
    config = SpaiConfig(
        backbone_config=backbone, patch_size=32, patch_stride=32, masking_radius=4, projection_dim=16,
        sca_num_heads=2, sca_hidden_size=16, head_mlp_ratio=1, projector_dropout=0.1, classifier_dropout=0.1,
    )
    SpaiForImageClassification(config).save_pretrained(path)
    return path


def _dataset(folder: Path, count: int = 40) -> Path:
    """Real = smooth low-contrast noise, fake = coarsely quantised noise: learnable in a few steps."""
    rng = np.random.default_rng(0)
    rows = ["image,split,class"]
    for index in range(count):
        label = index % 2
        height, width = (int(v) for v in rng.integers(34, 56, size=2))
        pixels = rng.integers(0, 256, (height, width, 3))
        pixels = pixels // 64 * 64 + 32 if label else pixels // 4 + 96
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")
        rows.append(f"{index}.png,{'train' if index < 28 else 'val'},{label}")
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return _tiny_base(root / "base"), _dataset(root)


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a 2-core machine (several-fold slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _args(base: Path, csv: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--base", str(base), "--data", str(csv), "--output-dir", str(output), "--residual-rank", "4",
        "--batch-size", "4", "--eval-batch-size", "4", "--warmup-ratio", "0.1",
        "--num-workers", "0", "--report-to", "none", "--seed", "3", "--noise-prob", "0.5",
        "--orthogonality-weight", "0.01", "--norm-weight", "0.01", *extra,
    ]


def _log_history(output: Path) -> list[dict]:
    last = max(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())["log_history"]


def test_two_process_cpu_training(setup, tmp_path):
    from peft import PeftModel

    import svd_adapter  # noqa: F401  (registers the SVD residual method with PEFT)

    base, csv = setup
    output = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        str(REPO / "scripts" / "train.py"),
        *_args(base, csv, output, "--max-steps", "16", "--eval-steps", "8", "--logging-steps", "1", "--lr", "0.05",
               "--modules-to-save", "classifier"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]

    recorded = json.loads((output / "training_args.json").read_text())
    assert recorded["world_size"] == 2 and recorded["total_train_batch_size"] == 8

    history = _log_history(output)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
    evals = [entry for entry in history if "eval_roc_auc" in entry]
    assert [entry["step"] for entry in evals] == [8, 16]
    assert all(0.0 <= entry["eval_roc_auc"] <= 1.0 for entry in evals)

    metrics = json.loads((output / "metrics.json").read_text())
    assert 0.0 <= metrics["threshold"] <= 1.0
    assert metrics["metrics"]["num_samples"] == 12 and "eer" in metrics["metrics"]

    # The exported adapter loads onto the base and changes its output; its weights moved away from the SVD init.
    model = SpaiForImageClassification.from_pretrained(base).eval()
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    before = model(images).logits.clone()
    adapted = PeftModel.from_pretrained(model, str(output)).eval()
    after = adapted(pixel_values=images).logits
    assert not torch.allclose(before, after)
    weights = load_file(output / ADAPTER_FILE)
    trained = {k: v for k, v in weights.items() if k.endswith(".svd_U")}
    assert trained and any(not torch.equal(v, weights[k + "0"]) for k, v in trained.items())


def test_resume_matches_uninterrupted_run(setup, tmp_path, one_thread):
    base, csv = setup
    common = ("--max-steps", "8", "--eval-steps", "4", "--logging-steps", "2", "--lr", "0.02", "--train-head")
    assert main(_args(base, csv, tmp_path / "straight", *common)) == 0

    interrupted = tmp_path / "split"
    assert main(_args(base, csv, interrupted, *common, "--stop-after-steps", "3")) == 0
    assert not (interrupted / ADAPTER_FILE).exists()  # stopped runs export nothing
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == ["checkpoint-3"]
    assert main(_args(base, csv, interrupted, *common, "--resume")) == 0

    for name in (f"checkpoint-8/{ADAPTER_FILE}", ADAPTER_FILE):
        expected, resumed = load_file(tmp_path / "straight" / name), load_file(interrupted / name)
        assert expected.keys() == resumed.keys()
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], atol=1e-6, rtol=0)
    straight_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert json.loads((interrupted / "metrics.json").read_text())["threshold"] == pytest.approx(
        straight_metrics["threshold"], abs=1e-6
    )


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["0.png,train,0"], "image,class", "missing column(s) split"),
        (["0.png,train,0", "1.png,train,2", "2.png,val,1"], "image,split,class", "line 3: class must be 0"),
        (["0.png,train,0", "gone.png,train,1", "2.png,val,1"], "image,split,class", "line 3: file not found"),
        (["0.png,train,0", "1.png,train,1", "2.png,test,1"], "image,split,class", "split 'val' has no rows"),
    ],
    ids=["missing-column", "label-2", "missing-file", "empty-split"],
)
def test_bad_csv_fails_before_training(setup, tmp_path, caplog, rows, header, message):
    base, csv = setup
    bad = csv.parent / f"bad_{tmp_path.name}.csv"
    bad.write_text("\n".join([header, *rows]) + "\n")
    output = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        assert main(["--base", str(base), "--data", str(bad), "--output-dir", str(output), "--report-to", "none"]) == 1
    assert message in caplog.text
    assert not list(output.glob("checkpoint-*")) and not (output / "training_args.json").exists()


def test_config_file_and_flag_precedence(tmp_path):
    (tmp_path / "train.yaml").write_text(
        "base: some/base\ndata: d.csv\nresidual-rank: 0.25\nlr: 0.001\ntrain_head: true\n"
    )
    config = parse_config(["--config", str(tmp_path / "train.yaml"), "--lr", "0.01", "--generator", "sdxl"])
    assert (config.base, config.residual_rank, config.lr, config.train_head) == ("some/base", 0.25, 0.01, True)
    assert config.output_dir == str(Path("adapters") / "sdxl")
    (tmp_path / "bad.json").write_text(json.dumps({"base": "b", "data": "d", "learning_rat": 1}))
    with pytest.raises(ValueError, match="unknown option.*learning_rat"):
        parse_config(["--config", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit):
        parse_config(["--data", "d.csv"])  # --base missing


def test_refuses_to_overwrite_a_run_without_resume(setup, tmp_path):
    base, csv = setup
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    config = TrainingConfig(base=str(base), data=str(csv), output_dir=str(tmp_path / "run"))
    with pytest.raises(FileExistsError, match="--resume"):
        train(config)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(TrainingConfig(base=str(base), data=str(csv), output_dir=str(tmp_path / "empty"), resume=True))


def test_single_class_split_rejected_before_training(setup, tmp_path, caplog):
    base, csv = setup
    bad = csv.parent / "one_class_val.csv"
    bad.write_text("image,split,class\n0.png,train,0\n1.png,train,1\n2.png,val,0\n4.png,val,0\n")
    with caplog.at_level(logging.ERROR):
        assert main(["--base", str(base), "--data", str(bad), "--output-dir", str(tmp_path / "o")]) == 1
    assert "split 'val' needs both real (0) and AI-generated (1)" in caplog.text


def test_gradient_accumulation_matches_one_big_batch(setup, tmp_path, one_thread):
    """4 x 2 accumulated = 8 at once (same rows: augmentations are seeded per row; dropout off): same loss, weights."""
    _, csv = setup
    base = tmp_path / "base"
    _tiny_base(base)
    config = SpaiConfig.from_pretrained(base)
    config.projector_dropout = config.classifier_dropout = 0.0
    SpaiForImageClassification.from_pretrained(base, config=config).save_pretrained(base)
    common = ("--max-steps", "2", "--eval-steps", "2", "--logging-steps", "1", "--lr", "0.01", "--train-head",
              "--warmup-ratio", "0")
    assert main([*_args(base, csv, tmp_path / "big", *common), "--batch-size", "8"]) == 0
    assert main([*_args(base, csv, tmp_path / "acc", *common), "--gradient-accumulation-steps", "2"]) == 0
    big, accumulated = _log_history(tmp_path / "big"), _log_history(tmp_path / "acc")
    assert [e["loss"] for e in accumulated if "loss" in e] == pytest.approx([e["loss"] for e in big if "loss" in e],
                                                                           abs=1e-5)
    expected, got = load_file(tmp_path / "big" / ADAPTER_FILE), load_file(tmp_path / "acc" / ADAPTER_FILE)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)


def test_paired_all_linear_training(setup, tmp_path, one_thread):
    """--paired trains on (real, fake) groups from the pair column; --target-modules all-linear adapts every Linear
    except the head's last two."""
    base, csv = setup
    lines = csv.read_text().splitlines()
    paired_csv = tmp_path / "paired.csv"
    paired_csv.write_text(
        "\n".join([lines[0] + ",pair"] + [f"{line},p{i // 2}" for i, line in enumerate(lines[1:])]) + "\n"
    )
    for index in range(40):  # image paths are relative to the CSV's folder
        (tmp_path / f"{index}.png").symlink_to(csv.parent / f"{index}.png")
    output = tmp_path / "run"
    extra = ("--max-steps", "3", "--eval-steps", "3", "--paired", "--target-modules", "all-linear", "--train-head")
    assert main(_args(base, paired_csv, output, *extra)) == 0
    keys = load_file(output / ADAPTER_FILE).keys()
    for module in ("attention.q_proj", "mlp.fc1", "projectors.0.fc1", "spectral_context_attention.to_kv",
                   "classifier.fc1", "classifier.out_proj"):
        assert any(module in key for key in keys), module
    assert not any("classifier.fc2.svd" in key for key in keys)  # trained in full, not adapted
    recorded = json.loads((output / "training_args.json").read_text())
    assert recorded["paired"] is True and recorded["train_rows"] == 14  # 28 training rows -> 14 (real, fake) groups
