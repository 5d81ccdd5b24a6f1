"""The baseline, the original VQA_NIA model, and what every model's config shares.

VQAModel: the question feature q_f (a Hugging Face text encoder) and the image feature i_f (a timm image encoder) fused
by element-wise product, as the original baseline, optionally through a Transformer encoder over image and question
features; then drop(relu(LN(linear(.)))) and a classifier over the answer vocabulary. The knowledge models extend it
(gel.py, hilink.py, oracles.py); models.py names them.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

import util
from encoders import feature_grid
from vqa_dataset import encode_questions

ABLATIONS = ["none", "image", "question"]


class ConfigError(util.UsageError):
    """A model setting that is unknown, of the wrong kind or out of range, or settings that do not work together."""


def setting(default, help, choices=None, low=None, high=None):
    """A model config's field: its default, what it does, and its allowed values (choices, or [low, high))."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "range": (low, high)})


@dataclass
class ModelConfig:
    """A model by its name and settings, checked when made. This class is the baseline's; each knowledge model's
    config extends it. The class attributes say what a model reads besides the question and image."""
    name: str = "baseline"
    ablate: str = setting("none", "blank one input: image (a question-only model) or question (an image-only model)",
                          ABLATIONS)

    vocab: ClassVar[bool] = False  # a vocabulary of heads, relations and tails (knowledge.json)
    predicts: ClassVar[bool] = False  # predicts the triple: reads nothing gold at test
    gold: ClassVar[bool] = False  # reads each question's gold knowledge (an oracle)
    embeds: ClassVar[bool] = False  # reads KG embeddings (--kge_dir)
    recipe: ClassVar[dict] = {}  # what --preset bokvqa sets for it beyond GEL-VQA's: its published training

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type is float and type(value) is int:
                value = float(value)
                setattr(self, field.name, value)
            if type(value) is not field.type:
                raise ConfigError(f"{self.name}: {field.name} is {value!r}, not a {field.type.__name__}.")
            choices, (low, high) = field.metadata.get("choices"), field.metadata.get("range", (None, None))
            if choices and value not in choices:
                raise ConfigError(f"{self.name}: {field.name} is {value!r}; choose one of {', '.join(choices)}.")
            if low is not None and not (math.isfinite(value) and low <= value < high):
                raise ConfigError(f"{self.name}: {field.name} is {value!r}; it is a rate in [{low}, {high}).")
        self.check()

    def check(self):
        """Rules between a model's settings (ConfigError)."""

    def uses_kb(self):
        """Whether the model reads a knowledge base (--kb; kb.csv in its run directory)."""
        return False

    def reads_kge(self):
        """Whether the model reads KG embeddings (--kge_dir)."""
        return self.embeds

    def knowledge_texts(self, df):
        """Per row of df, the knowledge its text encoder reads as words ('' for none): what a tokenizer trained on the
        training rows learns (--text_model scratch), and what --max_token may cut."""
        return [""] * len(df)

    def train_size(self, img_size):
        """The size training images are loaded at (a model that crops them loads them larger)."""
        return img_size

    def settings(self):
        """Its settings by name (what a config file may set for it), with what each does."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(self) if f.name != "name"}

    def to_json(self):
        return dataclasses.asdict(self)


class VQAModel(nn.Module):
    """logits = classifier(drop(relu(LN(linear(i_f * q_f))))), as the original baseline.

    With use_transformer_layer, a Transformer encoder runs over [fused, image, question, image grid tokens,
    question tokens] and its first output replaces the fused feature."""

    def __init__(self, text_encoder, image_encoder, num_answers, img_size, config=None, dim_h=1024, dropout=0.2,
                 use_transformer_layer=False, n_transformer_layers=1, n_heads=8, text_pool="cls"):
        super().__init__()
        self.config = config or ModelConfig()
        self.vocab = self.kb = self.kge = None  # a knowledge model's, given by knowledge.attach
        self.text_encoder = text_encoder
        if getattr(text_encoder, "pooler", None) is not None:
            if text_pool != "cls":
                text_encoder.pooler = None  # unused; DistributedDataParallel needs every parameter to take part
            else:
                text_encoder.pooler.activation = nn.Identity()  # as the original: pooler dense without tanh
        dim_q = text_encoder.config.hidden_size
        self.image_encoder = image_encoder
        self.image_proj = nn.Linear(image_encoder.num_features, dim_q)  # the original's replaced resnet fc
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(dim_q, dim_h)
        self.h_layer_norm = nn.LayerNorm(dim_h)
        self.classifier = nn.Linear(dim_h, num_answers)
        self.text_pool = text_pool
        self.use_transformer_layer = use_transformer_layer
        if use_transformer_layer:
            if dim_q % n_heads:
                raise util.UsageError(f"--n_heads {n_heads} does not divide the question encoder's hidden size "
                                      f"{dim_q}; choose a divisor of {dim_q}.")
            grid = feature_grid(image_encoder, img_size)
            self.image_pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim_q))
            self.type_embed = nn.Embedding(5, dim_q)  # fused, image, question, image grid, question tokens
            layer = nn.TransformerEncoderLayer(dim_q, n_heads, dim_feedforward=4 * dim_q, dropout=0.1,
                                               batch_first=True, norm_first=True)
            self.fusion_encoder = nn.TransformerEncoder(layer, n_transformer_layers, enable_nested_tensor=False)

    def forward(self, input_ids, attention_mask, image, triples=None):
        """{"answer": logits [B, answers]}; triples (the rows' gold triples) are for the knowledge models."""
        fused = self.combine(self.encode_text(input_ids, attention_mask), self.encode_image(image), attention_mask)
        return {"answer": self.classifier(self.hidden(fused))}

    def loss(self, out, batch, answer_loss):
        """A training batch's loss from the forward's outputs: the answer's (focal loss or cross entropy)."""
        return answer_loss(out["answer"], batch["label"])

    def encode(self, tokenizer, df, max_token):
        """Each row's token ids: its question."""
        return encode_questions(tokenizer, df["question"], max_token)

    def targets(self, df, training=False):
        """Per-row tensors that the forward pass or the loss reads besides the question, image and label."""
        return {}

    def start_training(self, targets):
        """Before training, what the model derives from the training rows' targets; returns notes to show."""
        return []

    def text_encoders(self):
        """The text encoders --freeze_text_epochs holds fixed."""
        return [self.text_encoder]

    def hidden(self, x, extra=None):
        """The answer path's hidden feature drop(relu(LN(linear(x) [+ extra])))."""
        pre = self.linear(x)
        if extra is not None:
            pre = pre + extra
        return self.drop(torch.relu(self.h_layer_norm(pre)))

    def encode_image(self, image, encoder=None, proj=None):
        """(feature map [B, C, H, W], image feature i_f), by this model's image encoder and projection or others."""
        if self.config.ablate == "image":
            image = torch.zeros_like(image)
        fmap = (encoder or self.image_encoder)(image)
        return fmap, self.drop((proj or self.image_proj)(fmap.mean(dim=(2, 3))))

    def encode_text(self, input_ids, attention_mask, encoder=None):
        """(question feature q_f, token features), by this model's text encoder or another."""
        encoder = encoder or self.text_encoder
        if self.config.ablate == "question":  # every question replaced by the empty one, <s></s>
            empty = [encoder.config.bos_token_id, encoder.config.eos_token_id]
            input_ids = torch.tensor([empty], device=input_ids.device).expand(len(input_ids), 2)
            attention_mask = torch.ones_like(input_ids)
        text = encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.text_pool == "mean":  # masked mean over tokens: learns faster than <s> for a small encoder from scratch
            mask = attention_mask[..., None].to(text.last_hidden_state.dtype)
            q_f = (text.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
        elif getattr(text, "pooler_output", None) is not None:
            q_f = text.pooler_output
        else:
            q_f = text.last_hidden_state[:, 0]
        return q_f, text.last_hidden_state

    def combine(self, text_f, image_f, attention_mask):
        """The fused feature: i_f * q_f, or the fusion encoder's first output."""
        (q_f, q_tokens), (fmap, i_f) = text_f, image_f
        fused = i_f * q_f
        if self.use_transformer_layer:
            if self.config.ablate == "question":
                attention_mask = torch.ones(q_tokens.shape[:2], dtype=attention_mask.dtype, device=q_f.device)
            grid_tokens = self.image_proj(fmap.flatten(2).transpose(1, 2)) + self.image_pos
            tokens = torch.cat([fused[:, None], i_f[:, None], q_f[:, None], grid_tokens, q_tokens], dim=1)
            types = torch.cat([torch.arange(3), torch.full((grid_tokens.shape[1],), 3),
                               torch.full((q_tokens.shape[1],), 4)]).to(q_f.device)
            tokens = tokens + self.type_embed(types)[None]
            pad = torch.cat([torch.zeros(len(tokens), 3 + grid_tokens.shape[1], dtype=torch.bool, device=q_f.device),
                             attention_mask == 0], dim=1)
            fused = self.fusion_encoder(tokens, src_key_padding_mask=pad)[:, 0]
        return fused
