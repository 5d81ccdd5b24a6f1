"""The oracles: upper bounds that read each question's gold knowledge, which a deployed model never has.

oracle_triple injects the gold triple's KG-embedding codes (gel.KnowledgeCodes) into the fused feature; oracle_text
pairs the question with its gold knowledge as words (the triple as "head relation tail", else the abstract). Both are
this repo's best measured configurations of their kind: the knowledge concatenated into the answer path, a copy gate
that can answer with the triple's head or tail (a held-out fact's answer is in no vocabulary), and a knowledge-free
loss: in training each row with gold knowledge is also answered without it, weighted as in the baseline's mean, so
that type B rows teach the baseline's task too and type A questions do not lose to the knowledge.
"""
from dataclasses import dataclass

import torch.nn as nn

import kb
import util
from gel import FUSIONS, Injection, KnowledgeCodes
from model import ModelConfig, VQAModel, setting
from vocab import triple_ids
from vqa_dataset import encode_questions, parse_triples


@dataclass
class OracleTripleConfig(ModelConfig):
    """The gold triple's KG embeddings (an upper bound)."""
    name: str = "oracle_triple"
    fusion: str = setting("concat", "how the codes k enter the fused feature f: concat, [f; P(k)] into the answer "
                                     "path's first linear layer; mul, GEL-VQA's f * k", FUSIONS)
    answer_from_kb: bool = setting(True, "a copy gate answers from the answer vocabulary or copies the gold triple's "
                                         "head or tail")
    knowledge_free_loss: bool = setting(True, "in training, also answer each row that has a triple without it "
                                              "(from the fused feature before the codes enter)")

    vocab = True
    embeds = True
    gold = True

    def uses_kb(self):  # its vocabulary takes the KB's names, so that a held-out fact's triple has its codes
        return self.answer_from_kb


@dataclass
class OracleTextConfig(ModelConfig):
    """The gold knowledge as words (an upper bound)."""
    name: str = "oracle_text"
    answer_from_kb: bool = setting(True, "a copy gate answers from the answer vocabulary or copies the gold triple's "
                                         "head or tail")
    knowledge_free_loss: bool = setting(True, "in training, also answer each row that has knowledge text from its "
                                              "question alone (an added text-encoder pass over those rows)")

    gold = True

    def knowledge_texts(self, df):
        return list(map(knowledge_text, df["triple"], df["abstract"]))


def knowledge_text(triple, abstract):
    """A row's knowledge as words: its triples as 'head relation tail', several joined by '. ', else its abstract."""
    triples = parse_triples(triple)
    return ". ".join(" ".join(t) for t in triples) if triples else abstract


class Oracle(VQAModel):
    """What both oracles share: the copy gate on the answer's hidden feature, copying from the gold triple, and the
    loss of the answer, the knowledge-free answers and the gate."""

    def __init__(self, text_encoder, image_encoder, num_answers, img_size, config, **options):
        super().__init__(text_encoder, image_encoder, num_answers, img_size, config, **options)
        if config.answer_from_kb:
            self.copy_gate = nn.Linear(self.linear.out_features, len(kb.PATHS))

    def answer(self, out, hidden):
        out["answer"] = self.classifier(hidden)
        if self.config.answer_from_kb:
            out["gate"] = self.copy_gate(hidden)
        return out

    def loss(self, out, batch, answer_loss):
        label = batch["label"]
        loss = answer_loss(out["answer"], label)
        if "knowledge_rows" in out and out["knowledge_rows"].any():
            # weighted as in the answer loss's mean over the batch rather than over these rows alone, so that with
            # the answers of the rows without knowledge it makes exactly the baseline's loss
            free_label = label[out["knowledge_rows"]]
            share = (free_label >= 0).sum() / (label >= 0).sum().clamp(min=1)
            loss = loss + answer_loss(out["answer_without_knowledge"], free_label) * share
        if self.config.answer_from_kb:
            loss = loss + nn.functional.cross_entropy(out["gate"], batch["copy"])
        return loss

    def targets(self, df, training=False):
        return {"copy": kb.copy_targets(df)} if training and self.config.answer_from_kb else {}

    def copy_candidates(self, out, df):
        return kb.gold_candidates(df)


class OracleTriple(Oracle):
    """{"answer" logits, with answer_from_kb "gate", in training with knowledge_free_loss "answer_without_knowledge"
    of the "knowledge_rows"}."""

    def __init__(self, text_encoder, image_encoder, num_answers, img_size, config, kge_widths, **options):
        super().__init__(text_encoder, image_encoder, num_answers, img_size, config, **options)
        self.codes = KnowledgeCodes(kge_widths, centre_and_normalise=config.fusion != "mul")
        self.injection = Injection(config.fusion, self.codes.width, text_encoder.config.hidden_size,
                                   self.linear.out_features)

    def forward(self, input_ids, attention_mask, image, triples=None):
        image_f = self.encode_image(image)
        text_f = self.encode_text(input_ids, attention_mask)
        fused = self.combine(text_f, image_f, attention_mask)
        code, present = self.codes(triples)
        out = {}
        if self.training and self.config.knowledge_free_loss:  # from the fused feature before the codes: no added pass
            out["answer_without_knowledge"] = self.classifier(self.hidden(fused[present]))
            out["knowledge_rows"] = present
        fused, extra = self.injection(fused, code, present)
        return self.answer(out, self.hidden(fused, extra))

    def targets(self, df, training=False):
        return {"triples": triple_ids(df, self.vocab), **super().targets(df, training)}

    def attach_knowledge(self, vocab, embeddings, kb_triples=None, tokenizer=None, max_token=None):
        return self.codes.build_tables(vocab, embeddings, kb_triples)


def question_alone(input_ids, attention_mask, separator):
    """attention_mask with every row's knowledge text masked out: every token after the question's first separator,
    so that the encoder reads "<s> q </s>", the question as it is encoded alone (a row without knowledge text is
    unchanged)."""
    is_separator = (input_ids == separator).long()
    after_question = is_separator.cumsum(-1) - is_separator > 0
    return attention_mask.masked_fill(after_question, 0)


class OracleText(Oracle):
    """{"answer" logits, with answer_from_kb "gate", in training with knowledge_free_loss "answer_without_knowledge"
    of the "knowledge_rows"}."""

    def __init__(self, text_encoder, image_encoder, num_answers, img_size, config, **options):
        if config.knowledge_free_loss and text_encoder.config.eos_token_id is None:
            raise util.UsageError("knowledge_free_loss finds the knowledge text after the question's </s>, but the "
                                  "question encoder's config names no eos_token_id; use an XLM-RoBERTa-type encoder.")
        super().__init__(text_encoder, image_encoder, num_answers, img_size, config, **options)

    def encode(self, tokenizer, df, max_token):
        """Each row's question paired with its knowledge text."""
        return encode_questions(tokenizer, df["question"], max_token, list(map(knowledge_text, df["triple"],
                                                                               df["abstract"])))

    def forward(self, input_ids, attention_mask, image, triples=None):
        image_f = self.encode_image(image)
        fused = self.combine(self.encode_text(input_ids, attention_mask), image_f, attention_mask)
        out = {}
        if self.training and self.config.knowledge_free_loss:
            alone = question_alone(input_ids, attention_mask, self.text_encoder.config.eos_token_id)
            rows = (alone != attention_mask).any(1)
            out["answer_without_knowledge"] = self.answer_alone(input_ids, alone, image_f, rows)
            out["knowledge_rows"] = rows
        return self.answer(out, self.hidden(fused))

    def answer_alone(self, input_ids, alone, image_f, rows):
        """Answer logits [n, answers] of the n rows with knowledge text (rows), from their questions alone: an added
        text-encoder pass over the questions' columns only (the knowledge text after them is cut off, not just
        masked: the same answer for less work)."""
        if not rows.any():  # the text encoder takes no empty batch
            return image_f[1].new_zeros(0, self.classifier.out_features)
        alone = alone[rows]
        width = int(alone.any(0).nonzero().max()) + 1
        ids, alone = input_ids[rows, :width], alone[:, :width]
        text_f = self.encode_text(ids, alone)
        return self.classifier(self.hidden(self.combine(text_f, [f[rows] for f in image_f], alone)))
