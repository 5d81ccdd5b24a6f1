"""The knowledge vocabularies: the heads, relations and tails a knowledge model knows, and the ids of its rows'
triples."""
import torch

from vqa_dataset import parse_triples

ABSENT = -2  # a triple slot of a row with fewer triples (or none); -1 is a part outside the vocabulary
NO_KNOWLEDGE = "(no knowledge)"  # the relation class of rows without a triple, in the models that predict one


class KnowledgeVocab:
    """The heads, relations and tails the model knows, each its own vocabulary (as GEL-VQA's), from the triples of the
    train and valid rows: the triple heads' classes. In the models that predict a triple the relation classes end
    with one more, the class of rows without a triple (no_knowledge, shown as NO_KNOWLEDGE), so that such rows
    (type A) can be told apart and pass without knowledge; it is known by its place, not its name, so that a
    user's relation of that name is a relation of its own. extended() appends names past the classes (from the
    knowledge base and the KG embeddings), which a triple can name though no train or valid row does. A name outside
    the vocabulary has id -1."""

    def __init__(self, heads, relations, tails, classes=None, no_knowledge=False):
        self.parts = (list(heads), list(relations) + ([NO_KNOWLEDGE] if no_knowledge and classes is None else []),
                      list(tails))
        self.classes = list(classes or self.sizes)  # per part: how many of its names are the heads' classes
        self.no_knowledge = self.classes[1] - 1 if no_knowledge else None  # the class of rows without a triple
        self.index = [{name: i for i, name in enumerate(names) if (part, i) != (1, self.no_knowledge)}
                      for part, names in enumerate(self.parts)]

    @classmethod
    def from_rows(cls, df, predicting):
        triples = [t for cell in df["triple"] for t in parse_triples(cell)]
        heads, relations, tails = (sorted({t[i] for t in triples}) for i in range(3))
        return cls(heads, relations, tails, no_knowledge=predicting)

    @classmethod
    def from_json(cls, saved):
        relations = saved["relations"]
        if "no_knowledge" in saved:
            return cls(saved["heads"], relations, saved["tails"], no_knowledge=saved["no_knowledge"])
        # a run of a version that kept the class in the relations, by its name
        predicting = relations[-1:] == [NO_KNOWLEDGE]
        return cls(saved["heads"], relations[:-1] if predicting else relations, saved["tails"], no_knowledge=predicting)

    def to_json(self):
        """The classes (what the weights depend on); the extension is made again where the run is loaded."""
        named = [n - (self.no_knowledge is not None and i == 1) for i, n in enumerate(self.classes)]
        return {**{key: names[:n] for key, names, n in zip(("heads", "relations", "tails"), self.parts, named)},
                "no_knowledge": self.no_knowledge is not None}

    def extended(self, heads=(), relations=(), tails=()):
        """This vocabulary with the given names it lacks appended to each part, ids from its classes on."""
        parts = [names + [n for n in dict.fromkeys(extra) if n not in known]
                 for names, extra, known in zip(self.parts, (heads, relations, tails), self.index)]
        return KnowledgeVocab(*parts, classes=self.classes, no_knowledge=self.no_knowledge is not None)

    @property
    def sizes(self):
        return [len(names) for names in self.parts]

    def named(self, part):
        """(id, name) of a part's names, without the class of rows without a triple."""
        return [(i, name) for i, name in enumerate(self.parts[part]) if (part, i) != (1, self.no_knowledge)]

    def triple_ids(self, triple):
        return [self.index[i].get(part, -1) for i, part in enumerate(triple)]

    def ids(self, cell, slots):
        """[slots, 3] ids of a triple cell's triples (first hop first), ABSENT past its last one; a cell without a
        triple is (ABSENT, NO_KNOWLEDGE, ABSENT) where the relations have that class."""
        rows = [self.triple_ids(t) for t in parse_triples(cell)[:slots]]
        if not rows and self.no_knowledge is not None:
            rows = [[ABSENT, self.no_knowledge, ABSENT]]
        return rows + [[ABSENT] * 3] * (slots - len(rows))

    def names(self, ids):
        """(head, relation, tail) of predicted ids; None for a prediction of no knowledge."""
        if ids[0] < 0:
            return None
        return tuple(names[i] for names, i in zip(self.parts, ids))


def triple_ids(df, vocab):
    """[N, slots, 3] the vocabulary ids of each row's triples (slots: the most any row has, at least 1)."""
    slots = max([len(parse_triples(cell)) for cell in df["triple"]] + [1])
    return torch.tensor([vocab.ids(cell, slots) for cell in df["triple"]], dtype=torch.long).reshape(len(df), slots, 3)
