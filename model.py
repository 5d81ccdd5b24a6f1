"""The VQA model: a Hugging Face text encoder and a timm image encoder fused by element-wise product
(as the original baseline), optionally followed by a Transformer encoder over image and question features.

Also: loading the encoders and tokenizer from the hub, a local directory, or (for the sample preset) building small
ones from scratch; building a model from a run's config; loading a trained run; and prediction with it.
"""
import copy
import json
import os
import socket

import pandas as pd
import timm
import torch
import torch.nn as nn
from tqdm import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerFast

import checkpoints
import util
import knowledge as kn
from images import load_image, to_model_input
from vqa_dataset import DataError, clean_text, encode_questions, parse_triples

# --text_model scratch: a small XLM-R built from a config, with a tokenizer trained on the questions
SCRATCH = "scratch"
# VQAModel's options, as config.json names them
HEAD_OPTIONS = ["dim_h", "dropout", "use_transformer_layer", "n_transformer_layers", "n_heads", "ablate", "text_pool"]
# the knowledge options VQAModel takes (earlier runs lack some: util.LATER_OPTIONS)
KNOWLEDGE_OPTIONS = ["knowledge", "knowledge_fusion", "triple_head", "triple_encoder", "answer_from_kb",
                     "kb_constrained", "kb_score", "triple_noise", "knowledge_dropout", "knowledge_free_loss",
                     "knowledge_head", "answer_relation"]


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


class VQAModel(nn.Module):
    """logits = classifier(drop(relu(LN(linear(i_f * q_f))))), as the original baseline.

    With use_transformer_layer, a Transformer encoder runs over [fused, image, question, image grid tokens,
    question tokens] and its first output replaces the fused feature.

    Knowledge (BOK-VQA; the pieces are in knowledge.py): "ideal" injects the gold triples' frozen KG-embedding codes
    into the fused feature (knowledge.Injection: mul, film or concat); "gel" (GEL-VQA) predicts the triple with
    knowledge.TripleHeads on the answer path's hidden features of the fused and the question feature (one forward
    computes both) and injects the predicted triple's codes the same way; "gel_text" pairs the question with the
    predicted triple as words and encodes it again (two text-encoder passes, one image pass). "text" changes the
    input only (the question paired with its gold knowledge text). With triple_encoder "own" the triple is predicted
    from encoders of its own (triple_encoders: a copy of the text and image encoders and the hidden layer, trained
    with the rest), so that the triple's loss does not share the answer's features (HiLINK's triple predictor is a
    network of its own); gel_text then encodes only the paired question for its answer. With triple_noise, in
    training, the answer pass reads at that rate the KB triple the model ranks next instead of its choice. With
    knowledge_dropout, in training, a row's knowledge text ("text") or gold triples ("ideal") are withheld at that
    rate. With knowledge_free_loss, in training, the answer path also answers the rows that have gold knowledge
    without it ("answer_without_knowledge", "knowledge_rows"): the baseline's task, taught by every type B row. With
    knowledge_head "own" ("text", "ideal"), the rows that have gold knowledge are answered by a hidden layer and
    classifier of their own (a copy of the answer path's at init), so that the knowledge never retrains the head that
    answers the rows without it; with "detached", their gradient also stops at the fused feature they read, so that
    the encoders learn only from the rows without knowledge (and the knowledge-free answers). With answer_relation
    (and answer_from_kb; gel, gel_text), a classifier on the answer's hidden feature says which of the predicted
    head's KB facts the copied tail comes from ("answer_relation"): the triple's own relation or another.
    """

    def __init__(self, text_encoder, image_encoder, num_answers, img_size, dim_h=1024, dropout=0.2,
                 use_transformer_layer=False, n_transformer_layers=1, n_heads=8, ablate="none", text_pool="cls",
                 knowledge="none", knowledge_sizes=(0, 0, 0), kge_widths=(0, 0), knowledge_fusion="mul",
                 triple_head="independent", triple_encoder="shared", answer_from_kb=False, kb_constrained=False,
                 kb_score="pair", triple_noise=0.0, knowledge_dropout=0.0, knowledge_free_loss=False,
                 knowledge_head="shared", answer_relation=False):
        super().__init__()
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
        # set where a run's model is made (knowledge.attach): the vocabularies, the KG embeddings, the KB triples as
        # ids (--kb_constrained, --answer_from_kb) and the pairing of questions with predicted triples (gel_text)
        self.vocab, self.kge, self.triple_text = None, None, None
        self.kb = None  # a knowledge.KnowledgeBase
        self.kb_constrained, self.kb_score = kb_constrained, kb_score
        self.triple_noise = triple_noise  # acts in training only (knowledge.choose_triple)
        self.knowledge_dropout = knowledge_dropout  # in training only (withhold_knowledge_text, withhold_triples)
        self.knowledge_free_loss = knowledge_free_loss  # in training only
        if (knowledge_dropout or knowledge_free_loss or knowledge_head != "shared") and knowledge == "text" and \
                text_encoder.config.eos_token_id is None:
            raise util.UsageError("--knowledge_dropout, --knowledge_free_loss and --knowledge_head find the "
                                  "knowledge text after the question's </s>, but the question encoder's config names "
                                  "no eos_token_id; use an XLM-RoBERTa-type encoder")
        self.knowledge_head = knowledge_head
        self.knowledge_answer = None  # the rows with gold knowledge's own answer head (knowledge_head own, detached)
        if knowledge_head != "shared":
            self.knowledge_answer = nn.ModuleDict({name: copy.deepcopy(getattr(self, name))
                                                   for name in ("linear", "h_layer_norm", "classifier")})
        if kn.embeds(knowledge):
            self.codes = kn.KnowledgeCodes(kge_widths, centre_and_normalise=knowledge_fusion != "mul")
            self.injection = kn.Injection(knowledge_fusion, self.codes.width, dim_q, dim_h)
        self.triple_encoders = None  # the triple's own encoders (triple_encoder "own")
        if kn.predicts(knowledge):
            if triple_encoder == "own":  # the same architecture, without an answer classifier
                self.triple_encoders = VQAModel(copy.deepcopy(text_encoder), copy.deepcopy(image_encoder), 1, img_size,
                                                dim_h, dropout, use_transformer_layer, n_transformer_layers, n_heads,
                                                ablate, text_pool)
                del self.triple_encoders.classifier
            self.triple_heads = kn.TripleHeads(triple_head, dim_h, knowledge_sizes)
            self.no_knowledge = knowledge_sizes[1] - 1  # the last relation: KnowledgeVocab.from_rows puts it there
        if answer_from_kb:  # answer from the vocabulary, or copy the triple's head or tail (knowledge.AnswerChooser)
            self.copy_gate = nn.Linear(dim_h, len(kn.PATHS))
        # which of the predicted head's KB facts the tail is copied from (knowledge.answer_relation_tails)
        self.answer_relation = nn.Linear(dim_h, knowledge_sizes[1]) if answer_relation else None

    def forward(self, input_ids, attention_mask, image, triples=None):
        """{"answer": logits}, and in the modes that predict a triple the logits "h", "r", "t" and the chosen
        "triple" [B, 3] (ids), and while training with triple_noise the "fed_triple" the answer pass read instead.
        triples: [B, slots, 3] vocabulary ids of the gold triples (ABSENT past a row's last one), used by "ideal"."""
        if self.knowledge_dropout and self.training:
            if self.knowledge == "text":
                attention_mask = kn.withhold_knowledge_text(input_ids, attention_mask, self.knowledge_dropout,
                                                            self.text_encoder.config.eos_token_id)
            else:  # ideal
                triples = kn.withhold_triples(triples, self.knowledge_dropout)
        image_f = self.encode_image(image)
        text_f = fused = None
        if not (self.knowledge == "gel_text" and self.triple_encoders is not None):  # it answers from the pair only
            text_f = self.encode_text(input_ids, attention_mask)
            fused = self.combine(text_f, image_f, attention_mask)
        out, extra = {}, None
        if kn.predicts(self.knowledge):
            out = self.triple_logits(input_ids, attention_mask, image, fused, text_f)
            noise = self.triple_noise if self.training else 0.0
            chosen = kn.choose_triple(out, self.kb if self.kb_constrained else None, self.no_knowledge, self.vocab,
                                      self.kb_score, noise)
            if noise:  # the answer pass reads chosen[1] instead
                out["triple"], out["fed_triple"] = chosen
            else:
                out["triple"] = chosen
            triples = out.get("fed_triple", out["triple"])[:, None]
        codes = self.codes(triples) if kn.embeds(self.knowledge) else None  # (code, whether a row has a triple)
        free_loss = self.knowledge_free_loss and self.training
        if free_loss or self.knowledge_answer is not None:  # only these ask which rows have gold knowledge
            rows, alone = self.gold_rows(input_ids, attention_mask, codes)
        if free_loss:
            out["answer_without_knowledge"] = self.answer_without_knowledge(input_ids, alone, image_f, fused, rows)
            out["knowledge_rows"] = rows
        if self.knowledge_head == "detached":  # the rows with knowledge train their head and injection, not encoders
            fused = torch.where(rows[:, None], fused.detach(), fused)
        if self.knowledge == "gel_text":
            input_ids, attention_mask = self.triple_text.pair(input_ids, attention_mask, triples[:, 0])
            fused = self.combine(self.encode_text(input_ids, attention_mask), image_f, attention_mask)
        elif codes is not None:
            fused, extra = self.injection(fused, *codes)
        hidden = self.hidden(fused, extra)
        out["answer"] = self.classifier(hidden)
        if self.knowledge_answer is not None:  # the rows with gold knowledge read their own head
            own = self.hidden(fused, extra, self.knowledge_answer)
            hidden = torch.where(rows[:, None], own, hidden)
            out["answer"] = torch.where(rows[:, None], self.knowledge_answer.classifier(own), out["answer"])
        if hasattr(self, "copy_gate"):
            out["gate"] = self.copy_gate(hidden)
        if self.answer_relation is not None:
            out["answer_relation"] = self.answer_relation(hidden)
        return out

    def gold_rows(self, input_ids, attention_mask, codes):
        """([B] bool: which rows have gold knowledge, as the model reads them (after knowledge_dropout); for "text" the
        attention mask of the questions alone, knowledge.question_alone, else None). "text": the rows with knowledge
        text after the question; "ideal": the rows with a triple, from KnowledgeCodes' output."""
        if self.knowledge == "ideal":
            return codes[1], None
        alone = kn.question_alone(input_ids, attention_mask, self.text_encoder.config.eos_token_id)
        return (alone != attention_mask).any(1), alone

    def answer_without_knowledge(self, input_ids, alone, image_f, fused, rows):
        """Answer logits [n, answers] of the n rows that have gold knowledge (rows), read without it
        (knowledge_free_loss), by the head of the rows without knowledge: ideal answers from the fused feature before
        the codes enter, at no added pass; text encodes those rows' questions alone (the attention mask alone), an
        added text-encoder pass over the questions' columns only (the knowledge text after them is cut off, not
        just masked: the same answer for less work)."""
        if self.knowledge == "ideal":
            return self.classifier(self.hidden(fused[rows]))
        if not rows.any():  # the text encoder takes no empty batch
            return image_f[1].new_zeros(0, self.classifier.out_features)
        alone = alone[rows]
        width = int(alone.any(0).nonzero().max()) + 1
        ids, alone = input_ids[rows, :width], alone[:, :width]
        text_f = self.encode_text(ids, alone)
        return self.classifier(self.hidden(self.combine(text_f, [f[rows] for f in image_f], alone)))

    def triple_logits(self, input_ids, attention_mask, image, fused, text_f):
        """The triple heads' logits from the hidden features of the fused and the question feature: the answer
        path's (GEL-VQA), or with triple_encoder "own" those of the triple's own encoders."""
        source = self
        if self.triple_encoders is not None:
            source = self.triple_encoders
            text_f = source.encode_text(input_ids, attention_mask)
            fused = source.combine(text_f, source.encode_image(image), attention_mask)
        return self.triple_heads(source.hidden(fused), source.hidden(text_f[0]))

    def text_encoders(self):
        """The question encoders: the answer path's and, with triple_encoder "own", the triple's."""
        return [self.text_encoder] + ([self.triple_encoders.text_encoder] if self.triple_encoders is not None else [])

    def hidden(self, x, extra=None, head=None):
        """The answer path's hidden feature drop(relu(LN(linear(x) [+ extra]))); GEL-VQA's triple heads read it too.
        head: whose linear and LayerNorm (default this model's; knowledge_answer for knowledge_head own, detached)."""
        head = head if head is not None else self
        pre = head.linear(x)
        if extra is not None:
            pre = pre + extra
        return self.drop(torch.relu(head.h_layer_norm(pre)))

    def encode_image(self, image):
        """(feature map [B, C, H, W], image feature i_f)."""
        if self.ablate == "image":
            image = torch.zeros_like(image)
        fmap = self.image_encoder(image)
        return fmap, self.drop(self.image_proj(fmap.mean(dim=(2, 3))))

    def encode_text(self, input_ids, attention_mask):
        """(question feature q_f, token features)."""
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
        return q_f, text.last_hidden_state

    def combine(self, text_f, image_f, attention_mask):
        """The fused feature: i_f * q_f, or the fusion encoder's first output."""
        (q_f, q_tokens), (fmap, i_f) = text_f, image_f
        fused = i_f * q_f
        if self.use_transformer_layer:
            if self.ablate == "question":
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
    knowledge = {k: util.run_option(config, k) for k in KNOWLEDGE_OPTIONS}
    return VQAModel(text_encoder, image_encoder, config["num_answers"], config["img_size"],
                    **{k: config[k] for k in HEAD_OPTIONS}, **knowledge,
                    knowledge_sizes=tuple(config.get("knowledge_sizes", (0, 0, 0))),
                    kge_widths=tuple(config.get("kge_widths", (0, 0))))


# what inference reads from a run's config.json
RUN_CONFIG_KEYS = ["num_answers", "image_arch", "image_model_kwargs", "img_size", "max_token", "data_dir",
                   "train_data"] + HEAD_OPTIONS


def load_run(model_path=None, device="cpu", results_dir="results", kb=None):
    """(model, tokenizer, config, answers, run_dir) from a run directory or its weights; no training data needed.
    kb: a knowledge base CSV (h, r, t) to use instead of the one the run was trained with (--kb)."""
    run_dir, weights = checkpoints.find_run(model_path, results_dir)
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
    checkpoints.load_weights(model, weights, config, answers)
    attach_run_knowledge(model, run_dir, config, tokenizer, kb)
    return model.to(device, memory_format=torch.channels_last).eval(), tokenizer, config, answers, run_dir


def attach_run_knowledge(model, run_dir, config, tokenizer, kb_path=None):
    """Gives a knowledge run's model what its weights do not hold (knowledge.attach), from the run's files; kb_path: a
    knowledge base to use instead of the run's own (--kb)."""
    vocab, kb, embeddings = kn.load_run_knowledge(run_dir, config)
    if kb_path is not None:
        if not kn.uses_kb(config):
            raise util.UsageError(f"--kb {kb_path}: {run_dir} uses no knowledge base (it was trained without "
                                  f"--kb_constrained and --answer_from_kb).")
        kb = kn.read_kb(kb_path)
    if vocab is not None:
        kn.attach(model, vocab, tokenizer, config["max_token"], kb, embeddings)


def autocast(device, precision):
    dtype = torch.bfloat16 if precision == "bf16" else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def forward(model, batch, device, precision):
    """The model's outputs (float32) for a collated batch, in the given precision (util.pick_precision)."""
    with autocast(device, precision):
        out = model(batch["input_ids"].to(device, non_blocking=True),
                    batch["attention_mask"].to(device, non_blocking=True), to_model_input(batch["image"], device),
                    batch["triples"].to(device, non_blocking=True))
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


@torch.no_grad()
def predict(model, loader, device, precision="fp32", loss_fn=None, top_k=1, desc="eval", progress=True):
    """dict(loss, accuracy, n, loss_sum, n_loss, correct, pred [N, top_k] and prob [N, top_k] of the answer
    classifier, answer and confidence [N] the final answer and its probability, right [N] whether it is right,
    index [N], and in the modes that predict a triple, triple [N, 3], the predicted ids; with --answer_from_kb,
    source [N], where each answer came from (knowledge.SOURCES)). The classifier's label -1 (an answer outside the
    vocabulary) adds no loss; only a copied name can get it right."""
    model.eval()
    chooser = kn.AnswerChooser(loader.dataset.answers) if getattr(model, "copy_gate", None) is not None else None
    parts, loss_sum, n_loss = {k: [] for k in ("pred", "prob", "index", "triple", "source", "right")}, 0.0, 0
    answers, confidence = [], []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
        out = forward(model, batch, device, precision)
        logits, label = out["answer"], batch["label"].to(device)
        known = int((label >= 0).sum())
        if loss_fn is not None and known:
            loss_sum += loss_fn(logits, label).item() * known
            n_loss += known
        probs = torch.softmax(logits, -1)
        prob, pred = probs.topk(min(top_k, logits.shape[-1]), dim=-1)
        parts["pred"].append(pred.cpu()), parts["prob"].append(prob.cpu()), parts["index"].append(batch["index"])
        rows = loader.dataset.df.iloc[batch["index"].numpy()]
        if chooser is None:
            answers += [loader.dataset.answers[i] for i in pred[:, 0].tolist()]
            confidence += prob[:, 0].tolist()
            parts["right"].append((pred[:, 0] == label).cpu())
        else:
            chosen = [row[0] for row in chooser.choose(probs, out["gate"], kn.copy_candidates(model, out, rows), 1)]
            answers += [a for a, _, _ in chosen]
            confidence += [p for _, p, _ in chosen]
            parts["source"].append(torch.tensor([source for _, _, source in chosen]))
            parts["right"].append(torch.tensor([kn.copied_right(a, source, gold) for (a, _, source), gold
                                                in zip(chosen, rows["answer"])]))
        if "triple" in out:
            parts["triple"].append(out["triple"].cpu())
    result = {k: torch.cat(v) for k, v in parts.items() if v}
    result.setdefault("index", torch.zeros(0, dtype=torch.long))
    result.setdefault("right", torch.zeros(0, dtype=torch.bool))
    n, correct = len(result["index"]), int(result["right"].sum())
    result.update(loss=loss_sum / max(n_loss, 1), accuracy=correct / max(n, 1), n=n, loss_sum=loss_sum, n_loss=n_loss,
                  correct=correct, answer=answers, confidence=confidence)
    return result


class Answers(list):
    """[(answer, probability)], best first; .triple is the predicted (head, relation, tail) of a run that predicts
    one (None for a prediction of no knowledge); .sources where each answer came from (knowledge.SOURCES)."""
    triple = None
    sources = None


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
    knowledge = util.run_option(config, "knowledge")
    ids = torch.tensor(encode_questions(tokenizer, row, config["max_token"], knowledge))
    slots = max(1, len(parse_triples(row["triple"][0]))) if kn.has_vocab(knowledge) else 0
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "image": torch.from_numpy(load_image(image_path, config["img_size"]))[None],
             "triples": torch.tensor([model.vocab.ids(row["triple"][0], slots)] if slots else [[]],
                                     dtype=torch.long).reshape(1, slots, 3)}
    model.eval()
    out = forward(model, batch, device, util.pick_precision(device, util.run_option(config, "precision")))
    probs = torch.softmax(out["answer"], -1)
    if "gate" in out:
        chosen = kn.AnswerChooser(answers).choose(probs, out["gate"], kn.copy_candidates(model, out, row), top_k)[0]
        top = Answers((a, p) for a, p, _ in chosen)
        top.sources = [kn.SOURCES[source] for _, _, source in chosen]
    else:
        prob, index = probs[0].topk(min(top_k, len(answers)))
        top = Answers((answers[i], p) for i, p in zip(index.tolist(), prob.tolist()))
    if "triple" in out:
        top.triple = model.vocab.names(out["triple"][0].tolist())
    return top


def question_tokens(tokenizer, question):
    """How many tokens a question has before truncation to max_token."""
    return len(tokenizer(clean_text(question))["input_ids"])
