"""Answering with a model: a data set of its inputs, its outputs in a run's precision, the accuracy over a loader, and
the answers to one image and question, computed alike by training, inference.py, inference_each.py and the demo."""
import pandas as pd
import torch
from tqdm import tqdm

import kb
import util
from images import load_image, to_model_input
from vqa_dataset import DataError, VQADataset, clean_text, collate, parse_triples, placeholder_part


def knowledge_input(triple, abstract, option="--triple"):
    """(triple, abstract) of a question's knowledge as a user types it (inference_each.py's --triple and --abstract,
    the demo's box), read by data.csv's rules (clean_text); a triple that is not head|relation|tail (several joined
    by ';'), or names a missing-value placeholder, is a DataError naming the option and the fix."""
    triple, abstract = clean_text(triple), clean_text(abstract)
    try:
        parse_triples(triple)
    except ValueError as e:
        raise DataError(f"{option} {triple!r}: {e}; write the triple as head|relation|tail (several joined by ';', a "
                        f"'|', ';' or '\\' inside a name escaped with '\\').") from None
    if placeholder_part(triple):
        raise DataError(f"{option} {triple!r}: {placeholder_part(triple)!r} is a missing-value placeholder, not a "
                        f"head, relation or tail; write the triple as head|relation|tail.")
    return triple, abstract


def make_dataset(model, df, images, tokenizer, answers, max_token, training=False):
    """The rows df as the model reads them: its encoding of their text and its per-row targets (model.targets)."""
    return VQADataset(df, images, model.encode(tokenizer, df, max_token), {a: i for i, a in enumerate(answers)},
                      tokenizer.pad_token_id, model.targets(df, training))


def say_truncation(model, tokenizer, df, max_token):
    """Warns of the rows whose question, or question and knowledge words, are longer than max_token: the knowledge
    is cut first, then the question."""
    questions = [len(ids) for ids in tokenizer(list(df["question"]), add_special_tokens=False)["input_ids"]]
    texts = model.config.knowledge_texts(df)
    words = [len(ids) if text else 0 for ids, text in zip(tokenizer(texts, add_special_tokens=False)["input_ids"],
                                                          texts)]
    single, pair = tokenizer.num_special_tokens_to_add(), tokenizer.num_special_tokens_to_add(pair=True)
    cut_questions = sum(n + single > max_token for n in questions)
    cut_texts = sum(n + w + pair > max_token for n, w in zip(questions, words) if w)
    if cut_questions or cut_texts:
        print(f"warning: --max_token {max_token} cuts {cut_questions} of {len(df)} questions"
              + (f" and {cut_texts} of the {sum(w > 0 for w in words)} knowledge texts read with them" if any(words)
                 else "") + " (the knowledge first, then the question's end); a run trained with a larger "
              "--max_token reads them whole.")


def autocast(device, precision):
    dtype = torch.bfloat16 if precision == "bf16" else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def to_device(batch, device):
    """A collated batch's tensors on device, images as the model's input (to_model_input)."""
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "image"}
    return {**moved, "image": to_model_input(batch["image"], device)}


def forward(model, batch, precision):
    """The model's outputs (float32) for a batch on its device (to_device), in the given precision."""
    with autocast(batch["image"].device, precision):
        out = model(batch["input_ids"], batch["attention_mask"], batch["image"], batch.get("triples"))
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


@torch.no_grad()
def predict(model, loader, device, precision="fp32", loss_fn=None, top_k=1, desc="eval", progress=True):
    """dict(loss, accuracy, n, loss_sum, n_loss, correct, pred [N, top_k] and prob [N, top_k] of the answer
    classifier, answer and confidence [N] the final answer and its probability, right [N] whether it is right,
    index [N], and for a model that predicts a triple, triple [N, 3], the predicted ids; with a copy gate,
    source [N], where each answer came from (kb.SOURCES)). The classifier's label -1 (an answer outside the
    vocabulary) adds no loss; only a copied name can get it right."""
    model.eval()
    chooser = kb.AnswerChooser(loader.dataset.answers) if getattr(model, "copy_gate", None) is not None else None
    parts, loss_sum, n_loss = {k: [] for k in ("pred", "prob", "index", "triple", "source", "right")}, 0.0, 0
    answers, confidence = [], []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
        index = batch["index"]
        batch = to_device(batch, device)
        out = forward(model, batch, precision)
        logits, label = out["answer"], batch["label"]
        known = int((label >= 0).sum())
        if loss_fn is not None and known:
            loss_sum += loss_fn(logits, label).item() * known
            n_loss += known
        probs = torch.softmax(logits, -1)
        prob, pred = probs.topk(min(top_k, logits.shape[-1]), dim=-1)
        parts["pred"].append(pred.cpu()), parts["prob"].append(prob.cpu()), parts["index"].append(index)
        rows = loader.dataset.df.iloc[index.numpy()]
        if chooser is None:
            answers += [loader.dataset.answers[i] for i in pred[:, 0].tolist()]
            confidence += prob[:, 0].tolist()
            parts["right"].append((pred[:, 0] == label).cpu())
        else:
            chosen = [row[0] for row in chooser.choose(probs, out["gate"], model.copy_candidates(out, rows), 1)]
            answers += [a for a, _, _ in chosen]
            confidence += [p for _, p, _ in chosen]
            parts["source"].append(torch.tensor([source for _, _, source in chosen]))
            parts["right"].append(torch.tensor([kb.copied_right(a, source, gold) for (a, _, source), gold
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
    """[(answer, probability)], best first; .triple is the predicted (head, relation, tail) of a model that predicts
    one (None for a prediction of no knowledge); .sources where each answer came from (kb.SOURCES)."""
    triple = None
    sources = None


@torch.no_grad()
def answer(model, tokenizer, config, answers, image_path, question, device, top_k=5, triple="", abstract=""):
    """Answers for an image file and a question string, preprocessed and computed as in training and inference.py
    (the run's precision on this device), so every script gives the same answer. triple and abstract: the
    question's knowledge, for the oracles (oracle_text reads either, oracle_triple the triple)."""
    device = torch.device(device)
    triple, abstract = knowledge_input(triple, abstract)
    row = pd.DataFrame({"question": [clean_text(question)], "triple": [triple], "abstract": [abstract], "answer": [""]})
    if not row["question"][0]:
        raise DataError("the question is empty (or only white space and invisible characters); type a question.")
    ids = model.encode(tokenizer, row, config["max_token"])[0]
    image = torch.from_numpy(load_image(image_path, config["img_size"]))
    targets = {name: t[0] for name, t in model.targets(row).items()}
    batch = to_device(collate([(torch.tensor(ids), image, torch.tensor(-1), 0, targets)], tokenizer.pad_token_id),
                      device)
    model.eval()
    out = forward(model, batch, util.pick_precision(device, util.run_option(config, "precision")))
    probs = torch.softmax(out["answer"], -1)
    if "gate" in out:
        chosen = kb.AnswerChooser(answers).choose(probs, out["gate"], model.copy_candidates(out, row), top_k)[0]
        top = Answers((a, p) for a, p, _ in chosen)
        top.sources = [kb.SOURCES[source] for _, _, source in chosen]
    else:
        prob, index = probs[0].topk(min(top_k, len(answers)))
        top = Answers((answers[i], p) for i, p in zip(index.tolist(), prob.tolist()))
    if "triple" in out:
        top.triple = model.vocab.names(out["triple"][0].tolist())
    return top


def question_tokens(tokenizer, question):
    """How many tokens a question has before truncation to max_token."""
    return len(tokenizer(clean_text(question))["input_ids"])
