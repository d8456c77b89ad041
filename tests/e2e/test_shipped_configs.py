"""Every shipped config trains as shipped (2 optimizer steps); only a hub model is swapped for a
tiny local one (and real data sets are read in part)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.train.run import run_training
from runkit import tiny_causal_dir

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _long(path: Path) -> bool:
    """MiniLM on a real data set under ../shared/data: the built-in 22M-parameter encoder trains
    as shipped (batch, length), 15-30 s each on two cores. The causal configs swap in a tiny
    Llama and take a few seconds."""
    cfg = load_config(path)
    return (
        str(cfg.data.train).startswith("../shared") and cfg.model.name_or_path == "builtin:minilm"
    )


# The long ones run with the slow tests, beside the full real-data runs.
PARAMS = [pytest.param(p, id=p.stem, marks=pytest.mark.slow if _long(p) else ()) for p in CONFIGS]


@pytest.mark.parametrize("path", PARAMS)
def test_shipped_config_trains(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # configs name their data relative to the repository root
    cfg = load_config(path)
    if str(cfg.data.train).startswith("../shared") and not (ROOT / cfg.data.train).exists():
        pytest.skip("../shared/data is absent (real datasets live beside the repo)")
    # Where and how long only: every other setting (batch size, lengths, packing, data) runs as
    # shipped, so a config that cannot train on its own data fails here.
    overrides = [
        f"run.output_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "train.eval_before=false",
    ]
    if str(cfg.data.train).startswith("../shared"):
        overrides += ["data.limit=400"]  # real data sets: read a few hundred rows (time only)
    if not cfg.model.name_or_path.startswith("builtin:"):
        overrides += [f"model.name_or_path={tiny_causal_dir(tmp_path, 'llama')}"]
    cfg = load_config(path, overrides)
    summary = run_training(cfg, quiet=True)
    assert summary["train_steps"] == 2
    saved = json.loads((Path(summary["model_dir"]) / "lmtune_model.json").read_text())
    assert saved["task"] == cfg.task


def _tiny_llama_with_a_real_vocabulary(root: Path) -> Path:
    """A tiny causal LM with builtin:minilm's 30,522-word vocabulary: real tokenizers pack text
    into far fewer tokens than the tests' tiny vocabulary, which hid a config too small to run."""
    from lmtune.config import ModelConfig
    from lmtune.models.load import load_tokenizer
    from tiny import make_causal, save_tiny

    tok = load_tokenizer(ModelConfig(name_or_path="builtin:minilm"))
    return save_tiny(make_causal("llama", tok), tok, root / "tiny-llama-bert-vocab")


def test_packed_chat_config_trains_on_its_bundled_data_as_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    model = _tiny_llama_with_a_real_vocabulary(tmp_path)
    path = ROOT / "configs" / "sft_chat_packed.yaml"
    cfg = load_config(path, [f"model.name_or_path={model}", f"run.output_dir={tmp_path / 'run'}"])
    summary = run_training(cfg, quiet=True)
    assert summary["train_steps"] >= 3 * cfg.train.epochs  # at least 3 steps per epoch
    # Too few packed sequences for one step: the message counts sequences, not rows.
    big = load_config(
        path,
        [f"model.name_or_path={model}", f"run.output_dir={tmp_path / 'r2'}", "train.batch_size=64"],
    )
    from lmtune.errors import UserError

    with pytest.raises(UserError, match=r"train split has \d+ packed sequences \(from 45 rows\)"):
        run_training(big, quiet=True)
