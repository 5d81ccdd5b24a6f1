"""The VQA model: a Hugging Face text encoder and a timm image encoder fused by element-wise product
(as the original baseline), optionally followed by a Transformer encoder over image and question features.

Also: loading the encoders and tokenizer from the hub, a local directory, or (for the sample preset) building small
ones from scratch; building a model from a run's config; loading a trained run; and prediction with it.
"""
import json
import os
import socket

import pandas as pd
import timm
import torch
import torch.nn as nn
from tqdm import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerFast

import util
from vqa_dataset import (ABSENT, DataError, KnowledgeVocab, clean_text, encode_questions, load_image, parse_triples,
                         to_model_input)

SCRATCH = "scratch"  # --text_model scratch: a small XLM-R built from a config, with a tokenizer trained on the questions
# VQAModel's options, as config.json names them
HEAD_OPTIONS = ["dim_h", "dropout", "use_transformer_layer", "n_transformer_layers", "n_heads", "ablate", "text_pool"]


class OfflineError(Exception):
    """A model must be fetched but there is no network and no local copy."""


def _hub_reachable(timeout=3.0):
    """One quick connection attempt, so that offline runs fail in seconds instead of the hub client's retries."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_message(kind, name, flag):
    return (f"Cannot load the {kind} '{name}': it is not a local directory, not in the Hugging Face cache, "
            f"and huggingface.co cannot be reached. Fix: download it on a machine with internet "
            f"(e.g. `huggingface-cli download {name}`) and copy the HF cache (~/.cache/huggingface) here, "
            f"or pass a local directory with {flag} PATH, or train offline with `--preset sample`.")


def _from_pretrained(loader, name, kind, flag, **kwargs):
    """loader.from_pretrained from a local dir, else the HF cache, else the hub; fails fast when offline."""
    if os.path.isdir(name):
        return loader.from_pretrained(name, **kwargs)
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise OfflineError(_offline_message(kind, name, flag))
    return loader.from_pretrained(name, **kwargs)


def load_tokenizer(name):
    return _from_pretrained(AutoTokenizer, name, "tokenizer", "--text_model")


def train_tokenizer(questions, vocab_size=2000):
    """A small BPE tokenizer trained on the given questions, with XLM-R's special tokens and ids.

    BPE keeps the few distinct words of a small corpus whole, which a small encoder trained from scratch
    learns from much faster than from the single syllables a Unigram model falls back to there."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids: <s>=0, <pad>=1, </s>=2
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(questions, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                           show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")


def build_text_encoder(name, pretrained=True, config_overrides=None):
    """AutoModel by hub name or local directory; with pretrained=False only its config is used."""
    if not pretrained:
        config = _from_pretrained(AutoConfig, name, "text model config", "--text_model", **(config_overrides or {}))
        return AutoModel.from_config(config)
    return _from_pretrained(AutoModel, name, "text model", "--text_model")


def xlmr_base_config():
    """xlm-roberta-base's architecture without a download: XLMRobertaConfig()'s defaults are its sizes (hidden 768,
    12 layers, 12 heads) but carry BERT's vocabulary, so the values that differ are set here."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5)


def small_text_config(vocab_size, max_token, hidden=128, layers=2, heads=4):
    """A small encoder of the XLM-RoBERTa architecture, built from a config (no download)."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=hidden * 4,
                            max_position_embeddings=max_token + 4, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                            type_vocab_size=1)


def build_image_encoder(name, pretrained=True, **kwargs):
    """timm backbone returning a feature map: hub name, or a local directory saved by timm.models.save_for_hf."""
    kwargs = {**kwargs, "num_classes": 0, "global_pool": ""}  # the feature map, without a head
    if os.path.isdir(name):
        return timm.create_model("local-dir:" + os.path.abspath(name), pretrained=pretrained, **kwargs)
    if pretrained and not _hub_reachable():
        # timm's weights live on the HF hub; use a cached copy rather than let the hub client retry for a minute
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        cached = cfg and cfg.hf_hub_id and try_to_load_from_cache(cfg.hf_hub_id, "model.safetensors")
        if not isinstance(cached, str):
            raise OfflineError(_offline_message("image model", name, "--image_model"))
        kwargs["pretrained_cfg_overlay"] = dict(file=cached)
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def image_model_spec(name, kwargs):
    """(timm architecture, model kwargs) that rebuild the image encoder later without its source directory."""
    if os.path.isdir(name):
        with open(os.path.join(name, "config.json"), encoding="utf-8") as f:
            saved = json.load(f)
        model_args = {k: v for k, v in saved.get("model_args", {}).items() if k not in ("num_classes", "global_pool")}
        return saved["architecture"], {**model_args, **kwargs}
    return name, dict(kwargs)


def feature_grid(image_encoder, img_size):
    """(height, width) of the encoder's feature map for img_size inputs. Probed in eval mode without gradients and
    the mode restored, so that building a model leaves BatchNorm's (pretrained) running statistics untouched."""
    was_training = image_encoder.training
    image_encoder.eval()
    param = next(image_encoder.parameters())
    with torch.no_grad():
        grid = image_encoder(torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)).shape[-2:]
    image_encoder.train(was_training)
    return tuple(grid)


def branch(dim_in, dim_h, num_classes, dropout):
    """GEL-VQA's classifier branch: Linear, LayerNorm, ReLU, Dropout, Linear."""
    return nn.Sequential(nn.Linear(dim_in, dim_h), nn.LayerNorm(dim_h), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(dim_h, num_classes))


def predicted_triple(out):
    """GEL-VQA's triple [B, 3]: the argmax of its head, relation and tail logits (no gradient flows through it)."""
    return torch.stack([out[k].argmax(-1) for k in "hrt"], -1)


class VQAModel(nn.Module):
    """logits = classifier(drop(relu(LN(linear(i_f * q_f))))), as the original baseline.

    With use_transformer_layer, a Transformer encoder runs over [fused, image, question, image grid tokens,
    question tokens] and its first output replaces the fused feature.

    Knowledge (BOK-VQA): with "ideal", the fused feature is multiplied element-wise by the gold triples' frozen KG
    embeddings [head; relation; tail] (their mean over a row's triples, projected to the fused size where it
    differs); a row without a triple uses a learned no-knowledge vector. With "gel" (GEL-VQA), branches predict the
    head from the fused feature and the relation and tail from the question, and the argmax triple's embeddings are
    used the same way: one forward computes both. "text" changes the input only (the question paired with its
    knowledge text).
    """

    def __init__(self, text_encoder, image_encoder, num_answers, img_size, dim_h=1024, dropout=0.2,
                 use_transformer_layer=False, n_transformer_layers=1, n_heads=8, ablate="none", text_pool="cls",
                 knowledge="none", num_entities=0, num_relations=0, kge_widths=(0, 0)):
        super().__init__()
        self.text_encoder = text_encoder
        if getattr(text_encoder, "pooler", None) is not None:
            if text_pool == "mean":
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
        self.ablate = ablate
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
        self.knowledge = knowledge
        self.vocab = None  # the KnowledgeVocab of an "ideal" or "gel" run, set where a run's model is made
        if knowledge in ("ideal", "gel"):
            # frozen pretrained KG embeddings of the vocabulary, saved with the weights; the last row of each stands
            # for a part unseen in training (zeros)
            self.register_buffer("entity_kge", torch.zeros(num_entities + 1, kge_widths[0]))
            self.register_buffer("relation_kge", torch.zeros(num_relations + 1, kge_widths[1]))
            width = 2 * kge_widths[0] + kge_widths[1]
            self.knowledge_proj = nn.Linear(width, dim_q) if width != dim_q else nn.Identity()
        if knowledge == "ideal":
            self.no_knowledge = nn.Parameter(torch.ones(dim_q))  # ones: the fused feature passes unchanged at first
        if knowledge == "gel":
            self.h_head = branch(dim_q, dim_h, num_entities, dropout)
            self.r_head = branch(dim_q, dim_h, num_relations, dropout)
            self.t_head = branch(dim_q, dim_h, num_entities, dropout)

    def forward(self, input_ids, attention_mask, image, triples=None):
        """{"answer": logits}, and with knowledge "gel" the logits "h", "r", "t" of the predicted triple. triples:
        [B, slots, 3] vocabulary ids of the gold triples (ABSENT past a row's last one), for "ideal"."""
        q_f, fused = self.fuse(input_ids, attention_mask, image)
        out = {}
        if self.knowledge == "gel":
            out = {"h": self.h_head(fused), "r": self.r_head(q_f), "t": self.t_head(q_f)}
            triples = predicted_triple(out)[:, None]
        if self.knowledge in ("ideal", "gel"):
            fused = fused * self.knowledge_vector(triples)
        hidden = self.drop(torch.relu(self.h_layer_norm(self.linear(fused))))
        out["answer"] = self.classifier(hidden)
        return out

    def knowledge_vector(self, triples):
        """[B, dim]: the mean over each row's triples of [head; relation; tail] KG embeddings, projected; for "ideal",
        the no-knowledge vector where a row has no triple."""
        present = triples[..., 0] != ABSENT  # [B, slots]

        def lookup(table, ids):  # unseen (-1) and absent parts: the zero row at the end
            return table[torch.where(ids < 0, len(table) - 1, ids)]

        embedded = torch.cat([lookup(self.entity_kge, triples[..., 0]), lookup(self.relation_kge, triples[..., 1]),
                              lookup(self.entity_kge, triples[..., 2])], -1)
        weights = present[..., None].to(embedded.dtype)
        mean = (embedded * weights).sum(1) / weights.sum(1).clamp(min=1)
        vector = self.knowledge_proj(mean)
        if self.knowledge == "ideal":
            vector = torch.where(present.any(1, keepdim=True), vector, self.no_knowledge.to(vector.dtype))
        return vector

    def fuse(self, input_ids, attention_mask, image):
        """(question feature q_f, fused feature): i_f * q_f, or the fusion encoder's first output."""
        if self.ablate == "image":
            image = torch.zeros_like(image)
        if self.ablate == "question":  # every question replaced by the empty one, <s></s>
            config = self.text_encoder.config
            empty = [config.bos_token_id, config.eos_token_id]
            input_ids = torch.tensor([empty], device=input_ids.device).expand(len(input_ids), 2)
            attention_mask = torch.ones_like(input_ids)
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.text_pool == "mean":  # masked mean over tokens: learns faster than <s> for a small encoder from scratch
            mask = attention_mask[..., None].to(text.last_hidden_state.dtype)
            q_f = (text.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
        elif getattr(text, "pooler_output", None) is not None:
            q_f = text.pooler_output
        else:
            q_f = text.last_hidden_state[:, 0]
        fmap = self.image_encoder(image)  # B, C, H, W
        i_f = self.drop(self.image_proj(fmap.mean(dim=(2, 3))))
        fused = i_f * q_f
        if self.use_transformer_layer:
            grid_tokens = self.image_proj(fmap.flatten(2).transpose(1, 2)) + self.image_pos
            q_tokens = text.last_hidden_state
            tokens = torch.cat([fused[:, None], i_f[:, None], q_f[:, None], grid_tokens, q_tokens], dim=1)
            types = torch.cat([torch.arange(3), torch.full((grid_tokens.shape[1],), 3),
                               torch.full((q_tokens.shape[1],), 4)]).to(image.device)
            tokens = tokens + self.type_embed(types)[None]
            pad = torch.cat([torch.zeros(len(tokens), 3 + grid_tokens.shape[1], dtype=torch.bool, device=image.device),
                             attention_mask == 0], dim=1)
            fused = self.fusion_encoder(tokens, src_key_padding_mask=pad)[:, 0]
        return q_f, fused


def run_config(options, num_answers, world_size=1):
    """A run's config.json: the options it saves (util.RUN_OPTIONS) and what its model is rebuilt from without its
    sources (the image encoder's timm architecture and arguments, the number of answers)."""
    config = {k: getattr(options, k) for k in util.RUN_OPTIONS}
    image_arch, image_kwargs = image_model_spec(options.image_model, options.image_model_kwargs)
    config.update(num_answers=num_answers, image_arch=image_arch, image_model_kwargs=image_kwargs,
                  world_size=world_size)
    return config


def build_model(config, text_config=None, from_sources=False):
    """The VQAModel a run's config describes; the one way a model is built (training, inference, bench, figures).

    from_sources: the encoders come from config's text_model and image_model (hub or local directory), pretrained
    if config says so; a text_config (a scratch encoder's) replaces the text model. Otherwise every weight is
    random, ready for load_weights, and nothing is read or downloaded: the text encoder from text_config (a run's
    text_encoder/ config, xlm-roberta-base's sizes), the image encoder from its timm architecture."""
    if text_config is not None:
        text_encoder = AutoModel.from_config(text_config)
    else:
        text_encoder = build_text_encoder(config["text_model"], pretrained=from_sources and config["pretrained"])
    image_source = config["image_model"] if from_sources else config["image_arch"]
    image_encoder = build_image_encoder(image_source, pretrained=from_sources and config["pretrained"],
                                        **config["image_model_kwargs"])
    return VQAModel(text_encoder, image_encoder, config["num_answers"], config["img_size"],
                    **{k: config[k] for k in HEAD_OPTIONS}, knowledge=config.get("knowledge", "none"),
                    num_entities=config.get("num_entities", 0), num_relations=config.get("num_relations", 0),
                    kge_widths=tuple(config.get("kge_widths", (0, 0))))


# what inference reads from a run's config.json
RUN_CONFIG_KEYS = ["num_answers", "image_arch", "image_model_kwargs", "img_size", "max_token", "data_dir",
                   "train_data"] + HEAD_OPTIONS


def load_run(model_path=None, device="cpu", results_dir="results"):
    """(model, tokenizer, config, answers, run_dir) from a run directory or its weights; no training data needed."""
    run_dir, weights = util.find_run(model_path, results_dir)
    for name in (util.CONFIG_FILE, util.ANSWERS_FILE, util.TOKENIZER_DIR, util.TEXT_CONFIG_DIR):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"{run_dir} has no {name}: weights are used from the run directory main.py "
                                    f"wrote them to, with its config.json, answers.json, tokenizer/ and text_encoder/.")
    config = util.read_json(os.path.join(run_dir, util.CONFIG_FILE), required=RUN_CONFIG_KEYS)
    answers = util.read_json(os.path.join(run_dir, util.ANSWERS_FILE))
    if not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
        raise util.CheckpointError(f"{os.path.join(run_dir, util.ANSWERS_FILE)} is not a list of answers; restore it "
                                   f"from a copy of the run.")
    if len(answers) != config["num_answers"]:
        raise ValueError(f"{run_dir}: answers.json has {len(answers)} answers but config.json says "
                         f"{config['num_answers']}; the run directory is inconsistent.")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(run_dir, util.TOKENIZER_DIR))
    model = build_model(config, AutoConfig.from_pretrained(os.path.join(run_dir, util.TEXT_CONFIG_DIR)))
    util.load_weights(model, weights, config, answers)
    model.vocab = load_vocab(run_dir, config)
    return model.to(device, memory_format=torch.channels_last).eval(), tokenizer, config, answers, run_dir


KNOWLEDGE_FILE = "knowledge.json"  # a knowledge run's entities and relations, and the KG embeddings it used


def load_vocab(run_dir, config):
    """The KnowledgeVocab of an "ideal" or "gel" run (None for others)."""
    if config.get("knowledge", "none") not in ("ideal", "gel"):
        return None
    saved = util.read_json(os.path.join(run_dir, KNOWLEDGE_FILE), required=["entities", "relations"])
    return KnowledgeVocab(saved["entities"], saved["relations"])


def autocast(device, precision):
    dtype = torch.bfloat16 if precision == "bf16" else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def forward(model, batch, device, precision):
    """The model's outputs (float32) for a collated batch, in the given precision (util.pick_precision)."""
    with autocast(device, precision):
        out = model(batch["input_ids"].to(device, non_blocking=True),
                    batch["attention_mask"].to(device, non_blocking=True), to_model_input(batch["image"], device),
                    batch["triples"].to(device, non_blocking=True))
    return {k: v.float() for k, v in out.items()}


@torch.no_grad()
def predict(model, loader, device, precision="fp32", loss_fn=None, top_k=1, desc="eval", progress=True):
    """dict(loss, accuracy, n, loss_sum, n_loss, correct, pred [N, top_k], prob [N, top_k], index [N], and for
    "gel" triple [N, 3], the predicted ids); label -1 (an answer unknown to the model) is wrong and adds no loss."""
    model.eval()
    preds, probs, indices, triples, loss_sum, n_loss, correct = [], [], [], [], 0.0, 0, 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
        out = forward(model, batch, device, precision)
        logits, label = out["answer"], batch["label"].to(device)
        known = int((label >= 0).sum())
        if loss_fn is not None and known:
            loss_sum += loss_fn(logits, label).item() * known
            n_loss += known
        prob, pred = torch.softmax(logits, -1).topk(min(top_k, logits.shape[-1]), dim=-1)
        correct += int((pred[:, 0] == label).sum())
        preds.append(pred.cpu()), probs.append(prob.cpu()), indices.append(batch["index"])
        if "h" in out:
            triples.append(predicted_triple(out).cpu())
    n = sum(len(i) for i in indices)
    result = {"loss": loss_sum / max(n_loss, 1), "accuracy": correct / max(n, 1), "n": n, "loss_sum": loss_sum,
              "n_loss": n_loss, "correct": correct,
              "pred": torch.cat(preds) if preds else torch.zeros(0, top_k, dtype=torch.long),
              "prob": torch.cat(probs) if probs else torch.zeros(0, top_k),
              "index": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)}
    if triples:
        result["triple"] = torch.cat(triples)
    return result


class Answers(list):
    """[(answer, probability)], best first; .triple is the predicted (head, relation, tail) of a "gel" run."""
    triple = None


@torch.no_grad()
def answer(model, tokenizer, config, answers, image_path, question, device, top_k=5, triple="", abstract=""):
    """Answers for an image file and a question string, preprocessed and computed as in training and inference.py
    (the run's precision on this device), so every script gives the same answer. triple and abstract: the
    question's knowledge, for runs with --knowledge text (either) or ideal (the triple)."""
    device = torch.device(device)
    row = pd.DataFrame({"question": [clean_text(question)], "triple": [clean_text(triple)],
                        "abstract": [clean_text(abstract)]})
    if not row["question"][0]:
        raise DataError("the question is empty (or only white space and invisible characters); type a question.")
    knowledge = config.get("knowledge", "none")
    ids = torch.tensor(encode_questions(tokenizer, row, config["max_token"], knowledge))
    slots = max(1, len(parse_triples(row["triple"][0]))) if knowledge in ("ideal", "gel") else 0
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "image": torch.from_numpy(load_image(image_path, config["img_size"]))[None],
             "triples": torch.tensor([model.vocab.ids(row["triple"][0], slots)] if slots else [[]],
                                     dtype=torch.long).reshape(1, slots, 3)}
    model.eval()
    out = forward(model, batch, device, util.pick_precision(device, config.get("precision", "auto")))
    prob, index = torch.softmax(out["answer"], -1)[0].topk(min(top_k, len(answers)))
    top = Answers((answers[i], p) for i, p in zip(index.tolist(), prob.tolist()))
    if "h" in out:
        top.triple = model.vocab.names(predicted_triple(out)[0].tolist())
    return top


def question_tokens(tokenizer, question):
    """How many tokens a question has before truncation to max_token."""
    return len(tokenizer(clean_text(question))["input_ids"])
