"""Mean-pooled sequence classifier for BERT encoders (`model.pooling: mean`).

transformers' BertForSequenceClassification reads the first ([CLS]) token through a
dense+tanh "pooler". Sentence encoders such as all-MiniLM-L6-v2 (builtin:minilm) were trained
to be read through the mean of their token vectors instead, and their pooler weights were
never trained for it. With LoRA, where the encoder itself barely moves, that read-out decides
a lot: on SST-2 LoRA through the mean reached 90.4 where LoRA through [CLS] stayed at 89.2
(README "Quality on real data"); the full fine-tune did better through [CLS].

The model keeps BERT's parameter names (`bert.*`, `classifier.*`; no pooler), so layer-wise
LR, LoRA targets and head detection work unchanged. Its config has its own model_type,
registered with transformers' Auto classes when lmtune.models.load is imported: lmtune loads
saved and exported folders by themselves, while plain transformers refuses the unknown type
with an error instead of silently reading the [CLS] token through an untrained pooler.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel

MEAN_POOL_MODEL_TYPE = "lmtune_bert_mean"
# Encoders whose checkpoints load into the mean-pooled classifier unchanged.
MEAN_POOL_BASES = ("bert", MEAN_POOL_MODEL_TYPE)


class MeanPoolBertConfig(BertConfig):
    """BertConfig of a classifier that reads the masked mean of the last hidden states."""

    model_type = MEAN_POOL_MODEL_TYPE


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the sequence of hidden [batch, seq, dim], padding (mask 0) left out."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MeanPoolBertForSequenceClassification(BertPreTrainedModel):
    """BERT encoder -> masked mean of the last layer -> dropout -> linear classifier."""

    config_class = MeanPoolBertConfig

    def __init__(self, config: MeanPoolBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = (
            config.classifier_dropout
            if config.classifier_dropout is not None
            else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> SequenceClassifierOutput:
        """Logits [batch, num_labels]; with labels also the loss (cross-entropy, MSE for one output)."""
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.classifier(self.dropout(masked_mean(out.last_hidden_state, attention_mask)))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )


def mean_pool_config(config: BertConfig, **overrides: object) -> MeanPoolBertConfig:
    """The mean-pooled classifier's config for a BERT checkpoint's config (labels in overrides)."""
    values = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        values.pop(key, None)
    values.update(overrides)
    return MeanPoolBertConfig(**values)


def register() -> None:
    """Make AutoConfig / AutoModelForSequenceClassification load saved mean-pooled folders."""
    try:
        AutoConfig.register(MEAN_POOL_MODEL_TYPE, MeanPoolBertConfig)
        AutoModelForSequenceClassification.register(
            MeanPoolBertConfig, MeanPoolBertForSequenceClassification
        )
    except ValueError:  # already registered (a second import path): nothing to do
        pass
