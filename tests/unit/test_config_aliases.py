"""The ecosystem's key names, did-you-mean, task inference, defaults picked per adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.cli_args import rewrite_argv
from lmtune.config import DEFAULT_LR, dump_config, load_config
from lmtune.errors import UserError
from runkit import instruction_rows, sentiment_rows, write_jsonl


def test_common_names_from_other_tools_are_read_as_lmtune_keys(tmp_path: Path) -> None:
    p = tmp_path / "axolotl_like.yaml"
    p.write_text(
        "task: sft\n"
        "base_model: builtin:minilm\n"
        "learning_rate: 1.0e-4\n"
        "num_epochs: 2\n"
        "micro_batch_size: 4\n"
        "gradient_accumulation_steps: 3\n"
        "lora_r: 4\nlora_alpha: 8\nlora_dropout: 0.1\nlora_target_modules: [q_proj, v_proj]\n"
        "sequence_len: 128\nval_set_size: 0.05\neval_steps: 7\nsave_steps: 14\n"
        "report_to: tensorboard\n"
        "data: {format: alpaca, train: x.jsonl}\n"
        "train: {per_device_eval_batch_size: 5}\n"
    )
    cfg = load_config(p)
    t = cfg.train
    assert (t.lr, t.epochs, t.batch_size, t.grad_accum, t.eval_batch_size) == (1e-4, 2, 4, 3, 5)
    assert (t.eval_every, t.save_every) == (7, 14)
    a = cfg.adapter
    assert (a.r, a.alpha, a.dropout, a.target_modules) == (4, 8, 0.1, ["q_proj", "v_proj"])
    assert cfg.model.name_or_path == "builtin:minilm" and cfg.model.max_length == 128
    assert cfg.data.split.eval == 0.05 and cfg.data.format == "instruction"
    assert cfg.tracking.tensorboard is True
    assert "train.lr (given as learning_rate)" in cfg.notes
    assert "data.format instruction (given as alpaca)" in cfg.notes
    assert "train.eval_batch_size (given as train.per_device_eval_batch_size)" in cfg.notes
    # The dump holds canonical keys only, and loads again to the same config.
    assert "learning_rate" not in dump_config(cfg)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("alpaca", "instruction"),
        ("sharegpt", "chat"),
        ("messages", "chat"),
        ("conversation", "chat"),
    ],
)
def test_data_format_names_of_other_tools(name: str, fmt: str) -> None:
    cfg = load_config(None, ["task=sft", f"data.format={name}"])
    assert cfg.data.format == fmt


def test_an_alias_override_replaces_the_files_value_and_flags_translate(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("task: classification\ntrain: {lr: 1.0e-3}\n")
    assert load_config(p, ["learning_rate=3e-4"]).train.lr == 3e-4
    assert load_config(p, ["train.learning_rate=4e-4"]).train.lr == 4e-4
    assert load_config(None, ["adapter=full"]).adapter.type == "full"  # Axolotl's adapter: lora
    argv = ["--debug", "train", "--config", "c.yaml", "--learning_rate", "1e-4", "--quiet"]
    assert rewrite_argv(argv) == ["--debug", "train", "c.yaml", "learning_rate=1e-4", "--quiet"]
    assert rewrite_argv(["prepare", "c.yaml", "--train.lr=2e-4", "--num-epochs", "2"]) == [
        "prepare",
        "c.yaml",
        "train.lr=2e-4",
        "num_epochs=2",
    ]
    # Real options and unknown ones are left to typer.
    assert rewrite_argv(["train", "c.yaml", "--set", "x=1"]) == ["train", "c.yaml", "--set", "x=1"]
    assert rewrite_argv(["eval", "run", "--learning_rate", "1"])[-1] == "1"


def test_two_spellings_of_one_key_and_unmappable_values_are_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("learning_rate: 1.0e-4\ntrain: {lr: 2.0e-4}\n")
    with pytest.raises(UserError, match="learning_rate and train.lr both set"):
        load_config(p)
    with pytest.raises(UserError, match="number of rows"):
        load_config(None, ["val_set_size=500"])
    with pytest.raises(UserError, match="wandb is not a tracker"):
        load_config(None, ["report_to=wandb"])


def test_unknown_keys_get_the_closest_known_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochz: 3, lrr: 1}\nlearnin_rate: 1\nmodle: {}\n")
    with pytest.raises(UserError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "train.epochz: unknown key (did you mean train.epochs?" in msg
    assert "train.lrr: unknown key (did you mean train.lr?" in msg
    assert "learnin_rate: unknown key (did you mean train.lr?" in msg
    assert "modle: unknown key (did you mean model " in msg


def test_max_steps_zero_is_refused_and_minus_one_means_epochs() -> None:
    with pytest.raises(UserError, match="train.max_steps: .*-1 to train for train.epochs"):
        load_config(None, ["train.max_steps=0"])
    assert load_config(None).train.max_steps == -1
    assert load_config(None, ["train.max_steps=5"]).train.max_steps == 5


def test_learning_rate_is_picked_per_adapter_unless_set() -> None:
    assert load_config(None).train.lr == DEFAULT_LR["lora"] == 2e-4
    assert load_config(None, ["adapter.type=dora"]).train.lr == 2e-4
    assert load_config(None, ["adapter.type=full"]).train.lr == 5e-5
    cfg = load_config(None, ["adapter.type=full", "train.lr=1e-3"])
    assert cfg.train.lr == 1e-3
    assert not any("train.lr" in n for n in cfg.notes)
    picked = load_config(None, ["adapter.type=full"])
    assert "train.lr 5e-05 (the default for adapter full)" in picked.notes


def test_task_is_inferred_from_the_data_unless_set(tmp_path: Path) -> None:
    inst = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(8))
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
    )
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    )
    labelled = write_jsonl(tmp_path / "cls.jsonl", sentiment_rows(8))
    squad = tmp_path / "squad.json"
    squad.write_text(
        json.dumps(
            {
                "data": [
                    {
                        "title": "t",
                        "paragraphs": [
                            {
                                "context": "Paris is in France.",
                                "qas": [
                                    {
                                        "id": "1",
                                        "question": "Where is Paris?",
                                        "answers": [{"text": "France", "answer_start": 12}],
                                    }
                                ],
                            }
                        ],
                    }
                ]
            }
        )
    )
    for path, task in [(inst, "sft"), (chat, "sft"), (pairs, "dpo"), (labelled, "classification")]:
        cfg = load_config(None, [f"data.train={path}"])
        assert cfg.task == task, path
        assert any(n.startswith(f"task {task} (inferred from") for n in cfg.notes)
    assert load_config(None, [f"data.train={squad}"]).task == "qa"
    # task: wins over the data, and a format alone decides too.
    assert load_config(None, [f"data.train={pairs}", "task=orpo"]).task == "orpo"
    assert load_config(None, ["data.format=sharegpt"]).task == "sft"
    # Nothing to read: the default stays.
    assert load_config(None, [f"data.train={tmp_path / 'absent.jsonl'}"]).task == "classification"


IMPORTS = Path(__file__).resolve().parents[1] / "data" / "imports"


def _imported(name: str, tmp_path: Path) -> tuple[object, list[str]]:
    from lmtune.config_import import render

    text, unmapped = render(IMPORTS / name)
    out = tmp_path / "lmtune.yaml"
    out.write_text(text)
    return load_config(out), unmapped


def test_import_axolotl_lora(tmp_path: Path) -> None:
    cfg, unmapped = _imported("axolotl_lora.yaml", tmp_path)
    assert cfg.task == "sft" and cfg.model.name_or_path == "NousResearch/Llama-3.2-1B"
    assert (cfg.adapter.type, cfg.adapter.r, cfg.adapter.target_modules) == (
        "lora",
        16,
        "all-linear",
    )
    assert (cfg.train.batch_size, cfg.train.grad_accum, cfg.train.lr) == (2, 2, 2e-4)
    assert cfg.data.train == "examples/data/alpaca.jsonl" and cfg.data.format == "instruction"
    assert cfg.data.packing and cfg.data.split.eval == 0.05 and cfg.model.max_length == 2048
    listed = " ".join(unmapped)
    for key in ("load_in_8bit", "optimizer", "gradient_checkpointing", "special_tokens"):
        assert key in listed, key
    assert "load_in_4bit" not in listed  # switched off: nothing lmtune would do differently


def test_import_llamafactory_dpo(tmp_path: Path) -> None:
    cfg, unmapped = _imported("llamafactory_dpo.yaml", tmp_path)
    assert cfg.task == "dpo" and cfg.preference.beta == 0.1
    assert (cfg.adapter.type, cfg.adapter.r, cfg.adapter.target_modules) == (
        "lora",
        8,
        "all-linear",
    )
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.eval_every) == (5e-6, 3.0, 500)
    assert cfg.data.limit == 1000 and cfg.data.split.eval == 0.1
    assert cfg.tracking.tensorboard is False and cfg.tracking.mlflow is False  # report_to: none
    assert any(u.startswith("dataset: 'dpo_en_demo'") and "data.train" in u for u in unmapped)
    assert any(u.startswith("template:") for u in unmapped)


def test_import_trl_arguments(tmp_path: Path) -> None:
    cfg, unmapped = _imported("trl_sft.yaml", tmp_path)
    assert cfg.task == "sft" and cfg.model.max_length == 1024
    assert (cfg.adapter.type, cfg.adapter.r, cfg.adapter.alpha) == ("lora", 32, 16)
    assert cfg.tracking.tensorboard and cfg.data.packing and cfg.train.eval_every == 100
    assert any(u.startswith("dataset_name:") for u in unmapped)
    assert any(u.startswith("push_to_hub:") for u in unmapped)


def test_a_run_is_named_after_its_config_file_unless_named(tmp_path: Path) -> None:
    p = tmp_path / "sft_my_data.yaml"
    p.write_text("task: sft\n")
    assert load_config(p).run.name == "sft_my_data"
    p.write_text("task: sft\nrun: {name: mine}\n")
    assert load_config(p).run.name == "mine"
    assert load_config(None).run.name == "run"
