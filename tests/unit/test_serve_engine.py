"""The serving engine without HTTP: sampling, stop strings, the decoding loop, prompts, folders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from lmtune.errors import UserError
from lmtune.models.export import export_merged, save_model
from lmtune.ops.serve_engine import (
    Engine,
    GenParams,
    Piece,
    StopText,
    alpaca_row,
    decode_tokens,
    load_engine,
    resolve_serve_dir,
    sample_next,
)
from tiny import (
    make_bert_tokenizer,
    make_causal,
    make_encoder_classifier,
    make_tokenizer,
    save_tiny,
)

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def _engine(tok, meta: dict | None = None, arch: str = "llama") -> Engine:
    model = make_causal(arch, tok)
    return Engine(
        model=model,
        tokenizer=tok,
        meta={"task": "sft", **(meta or {})},
        kind="causal",
        model_id="tiny",
        version=None,
        max_context=256,
        eos_ids={tok.eos_token_id},
    )


def test_sample_next_greedy_nucleus_and_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.1, 0.6, 0.3]))
    assert sample_next(logits, 0.0, 1.0, g) == 1
    # top_p 0.5: the nucleus is the most likely token alone; 0.8: tokens 1 and 2 only.
    assert {sample_next(logits, 1.0, 0.5, g) for _ in range(50)} == {1}
    assert {sample_next(logits, 1.0, 0.8, g) for _ in range(200)} == {1, 2}
    # temperature 1 samples the softmax: token 1 about 60% of the time.
    draws = [sample_next(logits, 1.0, 1.0, g) for _ in range(3000)]
    assert abs(draws.count(1) / 3000 - 0.6) < 0.04
    # A low temperature sharpens towards the argmax.
    cold = [sample_next(logits, 0.2, 1.0, g) for _ in range(500)]
    assert cold.count(1) / 500 > 0.95


def test_stop_text_holds_back_possible_stops_and_cuts_at_the_first() -> None:
    s = StopText(["END", "##"])
    assert s.step("hello E") == ("hello ", False)  # "E" may start "END": held back
    assert s.step("hello EN") == ("", False)
    assert s.step("hello ENx") == ("ENx", False)  # not a stop after all: released
    assert s.step("hello ENx #") == (" ", False)
    assert s.step("hello ENx ##tail") == ("", True)  # cut before the stop, nothing more
    assert s.sent == len("hello ENx ")
    u = StopText([])
    assert u.step("caf\ufffd") == ("caf", False)  # half a UTF-8 character waits
    assert u.step("café") == ("é", False)
    assert u.step("café!\ufffd", final=True) == ("!\ufffd", False)  # the end flushes everything


def test_decoding_loop_matches_generate_greedy() -> None:
    tok = make_tokenizer()
    for arch in ("llama", "gpt2"):
        model = make_causal(arch, tok)
        ids = tok("The quick brown fox")["input_ids"]
        ref = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        got = list(
            decode_tokens(model, ids, GenParams(max_tokens=20, temperature=0), set(), lambda: False)
        )
        assert got == ref[0, len(ids) :].tolist(), arch


def test_seeded_sampling_is_reproducible_and_tiny_top_p_is_greedy() -> None:
    tok = make_tokenizer()
    model = make_causal("llama", tok)
    ids = tok("Tell me a joke.")["input_ids"]

    def run(**kw) -> list[int]:
        return list(decode_tokens(model, ids, GenParams(max_tokens=12, **kw), set(), lambda: False))

    assert run(temperature=1.0, seed=7) == run(temperature=1.0, seed=7)
    assert run(temperature=1.0, seed=7) != run(temperature=1.0, seed=8)
    assert run(temperature=1.0, top_p=1e-6, seed=3) == run(temperature=0.0)
    calls = iter(range(100))
    assert (
        len(
            list(
                decode_tokens(
                    model,
                    ids,
                    GenParams(max_tokens=12, temperature=0),
                    set(),
                    lambda: next(calls) >= 4,
                )
            )
        )
        == 4
    )  # cancelled after 4 tokens


def test_generate_finish_reasons_and_stop_strings() -> None:
    tok = make_tokenizer()
    eng = _engine(tok)
    ids = eng.encode_completion("The weather today is")
    full = list(eng.generate(ids, GenParams(max_tokens=16, temperature=0)))
    text = "".join(p.text for p in full)
    assert full[-1].finish_reason == "length" and full[-1].completion_tokens == 16
    assert all(p.finish_reason is None for p in full[:-1])
    ref_ids = list(
        decode_tokens(eng.model, ids, GenParams(max_tokens=16, temperature=0), set(), lambda: False)
    )
    assert text == tok.decode(ref_ids, skip_special_tokens=True)
    stop = next(text[i : i + 2] for i in range(1, len(text) - 1) if text[i : i + 2].isalnum())
    cut = list(eng.generate(ids, GenParams(max_tokens=16, temperature=0, stop=("@@never@@", stop))))
    assert "".join(p.text for p in cut) == text[: text.find(stop)]
    assert cut[-1].finish_reason == "stop" and cut[-1].completion_tokens <= 16
    # An EOS ends a generation with "stop" (and is not text): let the first greedy token be EOS.
    eng.eos_ids = {ref_ids[0]}
    assert list(eng.generate(ids, GenParams(max_tokens=16, temperature=0))) == [
        Piece("", "stop", 1)
    ]


def test_chat_prompts_use_the_trained_template() -> None:
    templated = copy.deepcopy(make_tokenizer(chat_template=TEMPLATE))
    eng = _engine(templated, {"format": "chat", "template": "auto"})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    rendered = templated.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("[assistant] ")
    assert eng.encode_chat(messages) == templated(rendered, add_special_tokens=False)["input_ids"]
    # An instruction model trained without a chat template saw alpaca prompts.
    plain = make_tokenizer()
    alpaca = _engine(plain, {"format": "instruction", "template": "auto"})
    text = plain.decode(alpaca.encode_chat(messages))
    assert (
        "### Instruction:\nHello!" in text
        and "system: Be brief." in text
        and text.endswith("### Response:\n")
    )
    with pytest.raises(UserError, match="end with a user message"):
        eng.encode_chat([*messages, {"role": "assistant", "content": "Hi"}])


def test_alpaca_row_puts_earlier_turns_in_the_input() -> None:
    row = alpaca_row(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ]
    )
    assert row == {"instruction": "c", "input": "user: a\nassistant: b"}


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "lmtune_model.json").write_text(json.dumps({"task": "sft"}))
    return path


def test_resolve_serve_dir_run_model_and_registry(tmp_path: Path) -> None:
    run_model = _model_folder(tmp_path / "run" / "model")
    assert resolve_serve_dir(tmp_path / "run") == (run_model, None, None)
    assert resolve_serve_dir(run_model) == (run_model, None, None)
    reg = tmp_path / "reg"
    _model_folder(reg / "v1")
    v2 = _model_folder(reg / "v2" / "model")  # a version may hold a run folder
    (reg / "current").write_text("v2\n")
    assert resolve_serve_dir(reg) == (v2, "v2", reg)
    assert resolve_serve_dir(reg / "current") == (v2, "v2", reg)
    (reg / "current").unlink()
    (reg / "current").symlink_to("v1")
    assert resolve_serve_dir(reg)[:2] == ((reg / "v1").resolve(), "v1")
    assert resolve_serve_dir(reg / "current")[1] == "v1"
    (reg / "current").unlink()
    (reg / "current").write_text("v9")
    with pytest.raises(UserError, match="v9"):
        resolve_serve_dir(reg)
    (reg / "current").write_text("")
    with pytest.raises(UserError, match="empty"):
        resolve_serve_dir(reg)
    with pytest.raises(UserError, match="does not exist"):
        resolve_serve_dir(tmp_path / "missing")
    with pytest.raises(UserError, match="lmtune_model.json"):
        resolve_serve_dir(tmp_path)


def test_adapter_merged_export_and_registry_serve_the_same_model(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    tok = make_tokenizer()
    base = save_tiny(make_causal("gpt2", tok), tok, tmp_path / "base")
    torch.manual_seed(1)
    lora = get_peft_model(
        make_causal("gpt2", tok),
        LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False),
    )
    lora.peft_config["default"].base_model_name_or_path = str(base)
    meta = {"task": "sft", "format": "text", "template": "auto", "max_length": 128}
    save_model(lora, tok, tmp_path / "adapter", extra=meta)
    export_merged(tmp_path / "adapter", tmp_path / "merged")
    export_merged(tmp_path / "adapter", tmp_path / "registry" / "v1")
    (tmp_path / "registry" / "current").write_text("v1\n")
    ids = tok("The weather today is")["input_ids"]
    with torch.no_grad():
        base_logits = make_causal("gpt2", tok)(torch.tensor([ids])).logits
    outs, logits = {}, {}
    for name in ("adapter", "merged", "registry"):
        eng = load_engine(tmp_path / name)
        assert eng.kind == "causal" and eng.encode_completion("The weather today is") == ids
        outs[name] = list(
            decode_tokens(
                eng.model, ids, GenParams(max_tokens=8, temperature=0), set(), lambda: False
            )
        )
        with torch.no_grad():
            logits[name] = eng.model(torch.tensor([ids])).logits
    assert outs["adapter"] == outs["merged"] == outs["registry"]
    assert torch.allclose(logits["adapter"], logits["merged"], atol=1e-4)
    assert not torch.allclose(
        logits["adapter"], base_logits, atol=1e-3
    )  # the adapter does something
    reg = load_engine(tmp_path / "registry" / "current")
    assert (reg.model_id, reg.version) == ("registry", "v1")


def test_a_model_kind_without_endpoints_is_refused_at_start(tmp_path: Path) -> None:
    tok = make_bert_tokenizer()
    reward = make_encoder_classifier("bert", 1, tok)
    save_model(
        reward,
        tok,
        tmp_path / "rm",
        extra={"task": "reward", "format": "preference", "max_length": 64},
    )
    with pytest.raises(UserError, match="reward model"):
        load_engine(tmp_path / "rm")
