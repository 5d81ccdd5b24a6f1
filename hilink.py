"""HiLINK (Knowledge-Based Systems 2025): HK-TriNet+ predicts the question's triple in cascades, and Link-Tuning feeds
it to the text encoder as words; and this repo's hilink_kb, which reads a knowledge base at run time.

The triple's features: the head's from [image; question] and the relation's and tail's from the question alone, each
through a linear layer of its own, a LayerNorm shared by all (and by the answer), ReLU and dropout. The answer: the
question and the triple's words, "question head relation tail.", encoded again as one text (HiLINK's prompt, without
its context tokens, which its code never registers as parameters and so never trains), concatenated with the image
feature into a linear layer, the shared LayerNorm and the classifier. In training the answer reads the gold triple's
words, at test the predicted triple's (Link-Tuning). Its loss is the cross entropy of the answer and of the triple's
head, relation and tail (HiLINK's code calls loss.backward(loss), which scales every gradient by the loss: a defect,
not reproduced). Its image tower is frozen; here it is frozen where it starts pretrained and trained where it starts
from scratch (--preset sample), where frozen random features would measure nothing. XLM-R and a timm ResNet stand in
for KELIP, which cannot be had here.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

import kb
from model import ConfigError, ModelConfig, VQAModel, setting
from triples import HEADS, head_log_prior, head_targets, triple_heads, triple_loss
from vocab import triple_ids
from vqa_dataset import parse_triples


@dataclass
class HiLINKConfig(ModelConfig):
    """HiLINK as published, and the parts this repo adds to it."""
    name: str = "hilink"
    triple_head: str = setting("cascade", "cascade: HK-TriNet+'s chains h -> r -> t and t -> r -> h; independent: "
                                          "GEL-VQA's, a linear layer each", HEADS)
    triple_encoder: str = setting("shared", "the triple's features from the answer's encoders (HiLINK's), or from "
                                            "encoders of their own (own: a second text and image encoder, so that the "
                                            "triple's loss does not share the answer's features; twice the encoders' "
                                            "weights and passes)", ["shared", "own"])
    fusion: str = setting("concat", "how the image feature i meets a text feature t (the question's, for the head; "
                                    "the question and triple's, for the answer): concat, HiLINK's linear layer of "
                                    "[i; t]; mul, the baseline's of i * t", ["concat", "mul"])
    teacher_forcing: bool = setting(True, "in training the answer reads the gold triple's words (HiLINK's); off: the "
                                          "predicted triple's, as at test")
    kb_constrained: bool = setting(False, "snap each predicted triple to the most probable fact of the knowledge base")
    answer_from_kb: bool = setting(False, "a copy gate answers from the answer vocabulary or copies the predicted "
                                          "triple's head or tail, so that an answer can be a name outside the "
                                          "vocabulary")
    head_logit_adjustment: bool = setting(False, "train the head classifier with logit adjustment by log p(h | r) of "
                                                 "the training triples, so that a head no training question pairs "
                                                 "with a relation (a held-out fact's) can be predicted")
    head_from_answers: bool = setting(False, "the head classifier also learns from the rows without a triple whose "
                                             "answer names a head")
    triple_noise: float = setting(0.0, "in training, the rate at which the answer reads the KB triple the model "
                                       "scores highest among the others instead of its own (needs kb_constrained)",
                                  low=0.0, high=1.0)

    vocab = True
    predicts = True
    recipe = {"batch_size": 100}  # HiLINK's config/base.yaml: AdamW 5e-5 constant, 50 epochs, batch 100

    def check(self):
        if self.triple_noise and not self.kb_constrained:
            raise ConfigError(f"{self.name}: triple_noise reads the KB triple ranked next; set kb_constrained too.")

    def uses_kb(self):
        return self.kb_constrained or self.answer_from_kb

    def knowledge_texts(self, df):  # the prompts' words
        return [" ".join(t[0]) + "." if t else "" for t in map(parse_triples, df["triple"])]

    def reads_kge(self):  # the copy gate's tail where the KB lacks one (kb.predicted_candidates)
        return self.answer_from_kb and not self.kb_constrained


class TriplePrompt:
    """The question followed by a triple's words, "question head relation tail.", as one text in the tokenizer's
    layout (<s> ... </s> for XLM-R), the words cut first so that the question stays whole; a prediction of no
    knowledge leaves the question alone. Each vocabulary name is tokenized once, so a step costs no tokenizer call."""

    def __init__(self, tokenizer, vocab, max_token):
        self.words = [[tokenizer(name + end, add_special_tokens=False)["input_ids"] for name in names]
                      for names, end in zip(vocab.parts, ("", "", "."))]
        self.max_token, self.pad_id = max_token, tokenizer.pad_token_id
        # the special tokens around a text, found by encoding a probe: any tokenizer's layout
        probe = tokenizer("a", add_special_tokens=False)["input_ids"]
        single = tokenizer("a")["input_ids"]
        start = single.index(probe[0])
        self.prefix, self.suffix = single[:start], single[start + len(probe):]

    def link(self, input_ids, attention_mask, triples):
        """(input_ids, attention_mask) of the questions with the words of triples [B, 3] (ids; ABSENT for none)."""
        rows = []
        for ids, mask, triple in zip(input_ids.tolist(), attention_mask.tolist(), triples.tolist()):
            ids = ids[:sum(mask)]
            question = ids[len(self.prefix):len(ids) - len(self.suffix)]
            room = self.max_token - len(self.prefix) - len(self.suffix) - len(question)
            if triple[0] < 0 or room <= 0:
                rows.append(ids)
                continue
            words = [token for part, i in zip(self.words, triple) for token in part[i]][:room]
            rows.append(self.prefix + question + words + self.suffix)
        longest = max(map(len, rows))
        linked = torch.tensor([row + [self.pad_id] * (longest - len(row)) for row in rows], device=input_ids.device)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows], device=input_ids.device)
        return linked, mask


class HiLINK(VQAModel):
    """HiLINK: {"answer", "h", "r", "t" logits, "triple" [B, 3] the predicted ids, "read" [B, 3] the triple whose
    words the answer read, and with answer_from_kb "gate" the copy gate's logits}."""

    def __init__(self, text_encoder, image_encoder, num_answers, img_size, config, knowledge_sizes, pretrained,
                 dropout=0.2, use_transformer_layer=False, **options):
        if use_transformer_layer:
            raise ConfigError(f"--use_transformer_layer adds the baseline's fusion encoder; {config.name} fuses the "
                              f"image and text features by concatenation, as HiLINK.")
        super().__init__(text_encoder, image_encoder, num_answers, img_size, config, dropout=dropout, **options)
        dim_q, dim_h = text_encoder.config.hidden_size, self.linear.out_features
        # self.linear reads the question for the relation and tail; h_layer_norm is shared by the three features
        width = 2 * dim_q if config.fusion == "concat" else dim_q
        self.question_image = nn.Linear(width, dim_h)  # image and question: the head's feature
        self.prompt_image = nn.Linear(width, dim_h)  # image, and question and triple: the answer's
        self.triple_heads = triple_heads(config.triple_head, dim_h, knowledge_sizes, dropout)
        self.no_knowledge = knowledge_sizes[1] - 1  # the last relation: KnowledgeVocab.from_rows puts it there
        self.copy_gate = nn.Linear(dim_h, len(kb.PATHS)) if config.answer_from_kb else None
        self.triple_encoders = None  # triple_encoder own: the triple's text encoder, image encoder and projection
        if config.triple_encoder == "own":
            towers = (text_encoder, image_encoder, self.image_proj)
            self.triple_encoders = nn.ModuleList(copy.deepcopy(module) for module in towers)
        self.image_frozen = pretrained
        for encoder in self.image_encoders():
            encoder.requires_grad_(not pretrained)
        self.register_buffer("head_prior", None, persistent=False)  # head_logit_adjustment's, set by start_training

    def forward(self, input_ids, attention_mask, image, triples=None):
        image_f = self.encode_image(image)[1]
        out = self.triple_logits(input_ids, attention_mask, image, image_f)
        out["triple"] = kb.choose_triple(out, self.no_knowledge, self.kb if self.config.kb_constrained else None,
                                         self.vocab)
        out["read"] = self.read_triple(out, triples)
        prompt_f = self.encode_text(*self.prompt.link(input_ids, attention_mask, out["read"]))[0]
        hidden = self.feature(self.prompt_image, self.fuse(image_f, prompt_f))
        out["answer"] = self.classifier(hidden)
        if self.copy_gate is not None:
            out["gate"] = self.copy_gate(hidden)
        return out

    def triple_logits(self, input_ids, attention_mask, image, image_f):
        """The triple heads' logits from the head's feature ([image; question]) and the relation's and tail's (the
        question), by the answer's encoders or, with triple_encoder own, the triple's."""
        if self.triple_encoders is None:
            q_f = self.encode_text(input_ids, attention_mask)[0]
        else:
            text_encoder, image_encoder, image_proj = self.triple_encoders
            q_f = self.encode_text(input_ids, attention_mask, text_encoder)[0]
            image_f = self.encode_image(image, image_encoder, image_proj)[1]
        z_iq = self.feature(self.question_image, self.fuse(image_f, q_f))
        return self.triple_heads(z_iq, self.feature(self.linear, q_f))

    def fuse(self, image_f, text_f):
        """[i; t] (HiLINK's) or i * t (the baseline's)."""
        return torch.cat([image_f, text_f], -1) if self.config.fusion == "concat" else image_f * text_f

    def feature(self, linear, x):
        """drop(relu(LN(linear(x)))), the LayerNorm shared (HiLINK's h_layer_norm)."""
        return self.drop(torch.relu(self.h_layer_norm(linear(x))))

    def read_triple(self, out, triples):
        """The triple whose words the answer reads: in training with teacher_forcing the gold one, else the predicted
        one; with triple_noise, in training, at that rate the KB triple the model scores highest among the others."""
        read = triples[:, 0] if self.training and self.config.teacher_forcing else out["triple"]
        if self.training and self.config.triple_noise:
            read = kb.misread(out, read, self.kb, self.vocab, self.config.triple_noise)
        return read

    def loss(self, out, batch, answer_loss):
        """The answer's loss plus the triple's (HiLINK's, unweighted), and the copy gate's for the triple read."""
        loss = answer_loss(out["answer"], batch["label"])
        loss = loss + triple_loss(out, batch["triples"], self.head_prior, batch.get("head"))
        if self.copy_gate is not None:
            copy = kb.read_copy_targets(batch["copy"], out["read"], batch["triples"][:, 0])
            loss = loss + nn.functional.cross_entropy(out["gate"], copy)
        return loss

    def targets(self, df, training=False):
        """The rows' triples (what the loss and teacher forcing read), and in training the copy gate's targets and
        the head classifier's (head_from_answers)."""
        targets = {"triples": triple_ids(df, self.vocab)}
        if training and self.config.answer_from_kb:
            targets["copy"] = kb.copy_targets(df)
        if training and self.config.head_from_answers:
            targets["head"] = head_targets(df, self.vocab)
        return targets

    def start_training(self, targets):
        """Before training, from the training rows' targets: head_logit_adjustment's prior."""
        if self.config.head_logit_adjustment:
            prior = head_log_prior(targets["triples"], self.vocab.classes, targets.get("head"))
            self.head_prior = prior.to(self.classifier.weight.device)
        if not self.config.head_from_answers:
            return []
        taught = int((targets["head"] != targets["triples"][:, 0, 0]).sum())
        return [f"head_from_answers: {taught} of {len(targets['head'])} training rows have no triple but an answer "
                f"that names a head, and teach the head classifier that head"
                + ("" if taught else "; with none, the setting changes nothing")]

    def text_encoders(self):
        return [self.text_encoder] + ([self.triple_encoders[0]] if self.triple_encoders is not None else [])

    def image_encoders(self):
        return [self.image_encoder] + ([self.triple_encoders[1]] if self.triple_encoders is not None else [])

    def train(self, mode=True):
        super().train(mode)
        if self.image_frozen:  # a frozen tower keeps its BatchNorm statistics too
            for encoder in self.image_encoders():
                encoder.eval()
        return self

    def attach_knowledge(self, vocab, embeddings, kb_triples=None, tokenizer=None, max_token=None):
        self.prompt = TriplePrompt(tokenizer, vocab, max_token)
        return []

    def copy_candidates(self, out, df):
        return kb.predicted_candidates(self, out)
