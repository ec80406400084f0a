"""Helpers shared by the CLI, registry and Hub tests: fake adapter folders, a pre-filled offline Hub cache,
and running the ``spai-svd`` console command in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SPAI_SVD = Path(sys.executable).with_name("spai-svd")


def write_adapter_metadata(
    folder: Path, *, generator: str, threshold: float | None, fingerprint: str = "test-base", auc: float = 0.9
) -> Path:
    """Write the side files training leaves in an adapter folder (metrics + arguments) and a minimal config
    when the folder has none yet."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "adapter_config.json"
    if not config.exists():
        fingerprints = {"layer.q_proj": {"shape": [4, 4], "sample": [0.5], "base": fingerprint}}
        config.write_text(json.dumps({"peft_type": "SVD_RESIDUAL", "base_model_name_or_path": "/somewhere/base",
                                      "base_fingerprint": fingerprints}))
    validation = {"roc_auc": auc, "accuracy": 0.75, "runtime": 1.5}  # the layout spai_hf.training writes
    metrics = {"generator": generator, "split": "val", "metrics": validation}
    if threshold is not None:
        metrics["threshold"] = validation["threshold"] = threshold
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "training_args.json").write_text(
        json.dumps({"generator": generator, "data": "data/train.csv", "train_rows": 120, "lr": 5e-4})
    )
    return folder


def fill_hub_cache(hub_cache: Path, repo_id: str, source: Path, commit: str = "0" * 40, ref: str = "main") -> Path:
    """Place ``source``'s files in the huggingface_hub cache layout (models--ns--name/snapshots/<commit> +
    refs/<ref>), as a previous online download would have left them; returns the snapshot folder."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def run_cli(*args: str | os.PathLike, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``spai-svd`` console script offline and capture its output."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run([str(SPAI_SVD), *map(str, args)], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout)
