"""Smoke test of `spai-svd demo` at a minimal size: every step runs and leaves its artefacts, adapters load onto the
base, and live swapping gives the scores of the mixed batch."""

import json

import pytest
from PIL import Image

from spai_hf.demo import DemoConfig, main
from spai_hf.demo_data import DemoDataConfig


def test_demo_runs_end_to_end_at_minimal_size(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "--out", str(out), "--crop-size", "32", "--crops-per-source", "3", "--generators", "bilinear,deconv,autoencoder",
        "--base-steps", "3", "--adapter-steps", "2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "5/5 results" in printed

    summary = json.loads((out / "auc_table.json").read_text())
    rows = summary["auc"]
    assert set(rows) == {"spectral LR (own gen.)", "base", "svd_bilinear", "svd_deconv"}
    for values in rows.values():
        assert set(values) == {"bilinear", "deconv", "autoencoder"}
        assert all(0.0 <= auc <= 1.0 for auc in values.values())
    # the adapter activated alone scores exactly as its column of the mixed-adapter batch
    assert summary["timings"]["swap_vs_mixed_max_abs_diff"] < 1e-5

    with Image.open(out / "auc_table.png") as plot:
        assert plot.format == "PNG" and plot.width > 200
    assert (out / "base" / "config.json").is_file()
    for name in ("bilinear", "deconv"):
        adapter = out / "adapters" / name
        assert (adapter / "adapter_model.safetensors").is_file()
        assert json.loads((adapter / "metrics.json").read_text())["generator"] == name


def test_demo_refuses_bad_settings():
    with pytest.raises(ValueError, match="not among"):
        DemoConfig(data=DemoDataConfig(generators=("bilinear", "deconv")), base_generator="autoencoder")
    with pytest.raises(ValueError, match="at least two"):
        DemoConfig(data=DemoDataConfig(generators=("deconv",)), base_generator="deconv")
    with pytest.raises(SystemExit):
        main(["--generators", "deconv", "--base-generator", "deconv"])
