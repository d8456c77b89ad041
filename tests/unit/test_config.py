"""Config loading: overrides, all-errors-at-once reporting, shipped configs parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.config import Config, apply_overrides, describe_fields, dump_config, load_config
from lmtune.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_overrides_get_yaml_types(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("task: classification\ntrain: {lr: 1.0e-3}\n")
    cfg = load_config(
        p,
        [
            "train.lr=2e-4",
            "train.batch_size=4",
            "adapter.type=full",
            "data.labels=[neg, pos]",
            "train.max_grad_norm=null",
        ],
    )
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.train.batch_size == 4
    assert cfg.adapter.type == "full"
    assert cfg.data.labels == ["neg", "pos"]
    assert cfg.train.max_grad_norm is None


def test_every_error_reported_at_once_with_key_path_and_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("train: {lr: fast, batch_size: 0, epochz: 3}\nadapter: {type: qlora}\nmodle: {}\n")
    with pytest.raises(UserError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert str(p) in msg
    for key in ("train.lr", "train.batch_size", "train.epochz", "adapter.type", "modle"):
        assert key in msg, key
    assert "unknown key" in msg
    assert "5 problem(s)" in msg


def test_impossible_combination(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="packing only applies to task sft"):
        load_config(None, ["task=classification", "data.packing=true"])
    with pytest.raises(UserError, match="split.eval"):
        load_config(None, ["data.split.eval=0.6", "data.split.test=0.5"])


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("train:\n  lr: [1,\n")
    with pytest.raises(UserError, match=r"broken.yaml line \d+"):
        load_config(p)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_every_field_has_a_description() -> None:
    rows = describe_fields()
    assert len(rows) > 50
    missing = [key for key, _, desc in rows if not desc.strip()]
    assert not missing, missing


def test_dump_round_trips() -> None:
    cfg = load_config(None, ["train.lr=3e-5", "task=sft", "data.format=chat"])
    import yaml

    again = Config.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run.output_dir.startswith("runs/")
    assert cfg.data.train


def test_demo_config_file_matches_the_demo_command() -> None:
    from lmtune.demo import REVIEWS, demo_config

    shipped = load_config(ROOT / "configs" / "demo.yaml").model_dump()
    built = demo_config(Path("src/lmtune/resources/reviews.jsonl"), Path("runs/demo")).model_dump()
    assert (ROOT / shipped["data"]["train"]).resolve() == REVIEWS
    assert shipped == built
