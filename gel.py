"""GEL-VQA (BOK-VQA, AAAI 2024) as published, and the KG-embedding codes it injects.

GEL-VQA predicts the question's (head, relation, tail) with independent heads on the answer path's hidden features
(h from the fused feature, r and t from the question feature; one forward computes both) and multiplies the
predicted triple's frozen ConvKB codes [h; r; t] into the fused feature before the answer classifier. Its training
resizes images to 356 and crops a random 224 square (356/224 of --img_size here); its KG embeddings are ConvKB of
dimension 256 trained 50,000 steps with weight decay 1e-5 (kge.py's defaults, kge.GEL_VQA). Its code calls
loss.backward(loss), which scales every gradient by the loss: a defect, not reproduced here.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

import kge
from kb import choose_triple
from model import ModelConfig, VQAModel, setting
from triples import IndependentHeads, triple_loss
from vocab import ABSENT, triple_ids

FUSIONS = ["mul", "concat"]
CROP = 356 / 224  # the paper's training resize before its 224 random crop


@dataclass
class GELVQAConfig(ModelConfig):
    """GEL-VQA as published."""
    name: str = "gel_vqa"
    fusion: str = setting("mul", "how the codes k enter the fused feature f: mul, GEL-VQA's f * k; concat, [f; P(k)] "
                                 "into the answer path's first linear layer", FUSIONS)
    augment: bool = setting(True, "in training, resize images to 356/224 of --img_size and crop a random --img_size "
                                  "square (the paper's Resize(356) + RandomCrop(224)); at test a plain resize")

    vocab = True
    predicts = True
    embeds = True
    kge_settings = kge.GEL_VQA  # what kge.py trains by default; other KG embeddings are said to differ

    def train_size(self, img_size):
        return round(img_size * CROP) if self.augment else img_size


class KnowledgeCodes(nn.Module):
    """[head; relation; tail] KG-embedding codes of triples given as vocabulary ids.

    attach() looks up each (extended) vocabulary name in the KG embeddings the run was trained with (a copy is in
    its directory) into frozen tables; a name they lack is embedded from its relations where the knowledge base links
    it to entities they hold (the mean of those entities' rows), else it takes a learned unknown vector of its slot,
    as does a part outside the vocabulary (rather than zeros, which would blank a third of the code). With
    centre_and_normalise (concat) rows are centred on their table's mean and L2-normalised: ConvKB's codes then
    differ by direction rather than by a shared offset."""

    SLOTS = ("head", "relation", "tail")

    def __init__(self, widths, centre_and_normalise=False):
        super().__init__()
        entity, relation = widths
        for slot, width in zip(self.SLOTS, (entity, relation, entity)):
            setattr(self, f"{slot}_unknown", nn.Parameter(torch.zeros(width)))
            self.register_buffer(f"{slot}_table", torch.zeros(0, width), persistent=False)
            self.register_buffer(f"{slot}_missing", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.centre_and_normalise = centre_and_normalise
        self.width = 2 * entity + relation

    def build_tables(self, vocab, embeddings, kb=None):
        """Each slot's rows for the vocabulary's names (attach); returns the names left without a row."""
        lacking, linked = [], {}
        for h, _, t in kb or ():  # each entity's KB neighbours, for the names the KG embeddings lack
            linked.setdefault(h, []).append(t)
            linked.setdefault(t, []).append(h)
        for slot, names in zip(self.SLOTS, vocab.parts):
            matrix, row_of = (embeddings.relation, embeddings.relation_to_id) if slot == "relation" else \
                (embeddings.entity, embeddings.entity_to_id)
            rows = [self.row(name, matrix, row_of, linked if slot != "relation" else {}) for name in names]
            missing = torch.tensor([r is None for r in rows], dtype=torch.bool)
            table = torch.stack([r if r is not None else torch.zeros(matrix.shape[1]) for r in rows])
            if self.centre_and_normalise:
                table = torch.nn.functional.normalize(table - matrix.float().mean(0), dim=-1)
            device = self.head_unknown.device
            setattr(self, f"{slot}_table", table.to(device))
            setattr(self, f"{slot}_missing", missing.to(device))
            lacking += [name for i, (name, gone) in enumerate(zip(names, missing.tolist()))
                        if gone and (slot, i) != ("relation", vocab.no_knowledge)]
        return lacking

    @staticmethod
    def row(name, matrix, row_of, linked):
        """A name's row; for an entity the KG embeddings lack, the mean row of the entities the KB links it to
        (linked: each entity's KB neighbours)."""
        if name in row_of:
            return matrix[row_of[name]].float()
        rows = [row_of[other] for other in linked.get(name, ()) if other in row_of]
        return matrix[rows].float().mean(0) if rows else None

    def forward(self, triples):
        """(code [B, width] averaged over a row's triples, present [B]: whether the row has a triple) of triples
        [B, slots, 3]."""
        present = triples[..., 0] != ABSENT  # [B, slots]
        parts = []
        for i, slot in enumerate(self.SLOTS):
            ids = triples[..., i]
            table, missing = getattr(self, f"{slot}_table"), getattr(self, f"{slot}_missing")
            safe = ids.clamp(min=0)
            unknown = (ids < 0) | missing[safe]
            parts.append(torch.where(unknown[..., None], getattr(self, f"{slot}_unknown").to(table.dtype),
                                     table[safe]))
        embedded = torch.cat(parts, -1)
        weights = present[..., None].to(embedded.dtype)
        return (embedded * weights).sum(1) / weights.sum(1).clamp(min=1), present.any(1)


class Injection(nn.Module):
    """How a knowledge code k enters the fused feature f:
    mul (GEL-VQA's): f * P(k), P the identity where the code has f's width (as in the paper: 3 x 256 = 768), else a
    linear layer starting at the constant 1 (weight 0, bias 1), so that f * P(k) starts as f, as the codes' own
    product would not;
    concat: [f; P(k)] into the answer path's first linear layer, as an added term W_k P(k), zero-initialised, so that
    a model starts as the baseline.
    Rows without knowledge pass through unchanged (type A questions cannot lose to it)."""

    def __init__(self, fusion, code_width, dim_q, dim_h):
        super().__init__()
        self.fusion = fusion
        if fusion == "mul":
            self.project = nn.Identity() if code_width == dim_q else nn.Linear(code_width, dim_q)
            if code_width != dim_q:
                nn.init.zeros_(self.project.weight)
                nn.init.ones_(self.project.bias)
        else:
            self.project = nn.Linear(code_width, dim_h, bias=False)
            nn.init.zeros_(self.project.weight)

    def forward(self, fused, code, present):
        """(fused feature, term added to the answer path's first linear layer or None)."""
        keep = present[:, None]
        if self.fusion == "mul":
            return torch.where(keep, fused * self.project(code), fused), None
        return fused, self.project(code) * keep


def random_crop(images, size):
    """A random size x size square of each image [B, C, H, W] (torch's generator, which a checkpoint saves)."""
    height, width = images.shape[-2:]
    ys = torch.randint(0, height - size + 1, (len(images),)).tolist()
    xs = torch.randint(0, width - size + 1, (len(images),)).tolist()
    return torch.stack([image[:, y:y + size, x:x + size] for image, y, x in zip(images, ys, xs)])


class GELVQA(VQAModel):
    """GEL-VQA: {"answer", "h", "r", "t" logits, "triple" [B, 3] the predicted ids}."""

    def __init__(self, text_encoder, image_encoder, num_answers, img_size, config, knowledge_sizes, kge_widths,
                 **options):
        super().__init__(text_encoder, image_encoder, num_answers, img_size, config, **options)
        dim_q, dim_h = text_encoder.config.hidden_size, self.linear.out_features
        self.img_size = img_size
        self.codes = KnowledgeCodes(kge_widths, centre_and_normalise=config.fusion != "mul")
        self.injection = Injection(config.fusion, self.codes.width, dim_q, dim_h)
        self.triple_heads = IndependentHeads(dim_h, knowledge_sizes)
        self.no_knowledge = knowledge_sizes[1] - 1  # the last relation: KnowledgeVocab.from_rows puts it there

    def forward(self, input_ids, attention_mask, image, triples=None):
        if self.training and self.config.augment:
            image = random_crop(image, self.img_size)
        image_f = self.encode_image(image)
        text_f = self.encode_text(input_ids, attention_mask)
        fused = self.combine(text_f, image_f, attention_mask)
        out = self.triple_heads(self.hidden(fused), self.hidden(text_f[0]))
        out["triple"] = choose_triple(out, self.no_knowledge)
        fused, extra = self.injection(fused, *self.codes(out["triple"][:, None]))
        out["answer"] = self.classifier(self.hidden(fused, extra))
        return out

    def loss(self, out, batch, answer_loss):
        """The answer's loss plus the triple's (GEL-VQA's, unweighted)."""
        return answer_loss(out["answer"], batch["label"]) + triple_loss(out, batch["triples"])

    def targets(self, df, training=False):
        return {"triples": triple_ids(df, self.vocab)}

    def attach_knowledge(self, vocab, embeddings, kb=None, tokenizer=None, max_token=None):
        """The names' codes (KnowledgeCodes.build_tables); returns the names without one."""
        return self.codes.build_tables(vocab, embeddings, kb)
