"""What a knowledge model is given besides its weights, and how a run keeps it: the vocabularies (knowledge.json), the
knowledge base (kb.csv) and the KG embeddings (kge/), made from the training data and files at the start of a run,
and read back from the run directory by every script."""
import os

import kge
import util
from kb import KnowledgeBase, beyond_classes, read_kb, training_kb, write_kb
from vocab import KnowledgeVocab

VOCAB_FILE = "knowledge.json"  # a knowledge run's vocabularies
KGE_DIR = "kge"  # in a knowledge run's directory: the KG embeddings it was trained with (kge.py's files)
KB_FILE = "kb.csv"  # the knowledge base a run was trained with (h, r, t), in its run directory
KGE_COMMAND = "`python kge.py --data_dir DATA_DIR --out DIR` (or --triples all_triple.csv)"


def attach(model, vocab, tokenizer, max_token, kb_triples=None, embeddings=None):
    """Gives a knowledge model what its weights do not hold: its vocabulary, extended by the names of the knowledge
    base (kb_triples) and of the KG embeddings (a kge.KGE) that no train or valid row has; the KB triples as ids; the
    KG embeddings; and what its family builds from them (attach_knowledge). Returns the names without a KG code."""
    if kb_triples is not None:
        vocab = vocab.extended(*zip(*kb_triples))
    if embeddings is not None:
        entities = embeddings.entity_names
        vocab = vocab.extended(entities, sorted(embeddings.relation_to_id, key=embeddings.relation_to_id.get), entities)
    model.vocab, model.kge = vocab, embeddings
    model.kb = KnowledgeBase(kb_triples, vocab).to(next(model.parameters()).device) if kb_triples is not None else None
    return model.attach_knowledge(vocab, embeddings, kb_triples, tokenizer, max_token)


def shared_names(kb_triples, vocab, source, log):
    """Says how many of a knowledge base's names the vocabulary's classes (the train and valid triples) have, with
    examples of those they lack; a KB that shares none with them is a UsageError (its facts could not be told apart
    by the model, and every question would get its first one)."""
    names = [set(part) for part in zip(*kb_triples)]
    known = [{n for n in part if 0 <= vocab.index[i].get(n, -1) < vocab.classes[i]} for i, part in enumerate(names)]
    if not any(known):
        examples = ", ".join(sorted(names[0])[:3])
        raise util.UsageError(f"{source} shares no name with the triples the model was trained on (heads such as "
                              f"{examples}): is it the knowledge base of this data? Give the run's own, or one of "
                              f"its data's.")
    lacking = [sorted(part - k) for part, k in zip(names, known)]
    if any(lacking):
        log(f"note: {source}: " + ", ".join(f"{len(k)} of its {len(part)} {what} are trained ones"
                                            for k, part, what in zip(known, names, ("heads", "relations", "tails")))
            + f"; the others (e.g. {', '.join((lacking[0] + lacking[2] + lacking[1])[:3])}) are reached through the "
              f"knowledge base only")


def prepare(args, model_config, config, rows, log):
    """For a model with a knowledge vocabulary: (the vocabularies of the train and valid rows' triples, the KB triples
    or None, the KG embeddings or None), their sizes and widths in config; says which names the embeddings lack.
    rows: the train and valid rows."""
    vocab = KnowledgeVocab.from_rows(rows, model_config.predicts)
    if not vocab.parts[0]:
        raise util.DataError(f"--model {model_config.name}: the train and valid rows of {args.data_dir}/data.csv hold "
                             f"no triples.")
    config.update(knowledge_sizes=vocab.sizes)
    log(f"knowledge: {' / '.join(map(str, vocab.sizes))} heads / relations / tails in the train and valid triples")
    kb = knowledge_base(args, rows, vocab, config, log) if model_config.uses_kb() else None
    if not args.kge_dir:
        return vocab, kb, None
    embeddings = kge.load_kge(args.kge_dir)
    if not any(name in embeddings.entity_to_id for name in vocab.parts[0] + vocab.parts[2]):
        raise util.UsageError(f"--kge_dir {args.kge_dir}: the KG embeddings share no entity with the data's triples "
                              f"(heads such as {', '.join(vocab.parts[0][:3])}): were they trained on this data? Make "
                              f"them with {KGE_COMMAND}.")
    config.update(kge_widths=[embeddings.entity.shape[1], embeddings.relation.shape[1]])
    lacking = [name for part, known in enumerate((embeddings.entity_to_id, embeddings.relation_to_id,
                                                  embeddings.entity_to_id))
               for _, name in vocab.named(part) if name not in known]
    config["knowledge_missing_in_kge"] = len(lacking)
    log(f"KG embeddings from {args.kge_dir} ({embeddings.settings.get('model')}, widths {config['kge_widths']}, "
        f"{len(embeddings.entity_to_id)} entities)" + (f"; {len(lacking)} vocabulary names are not in them: embedded "
                                                      f"from their KB relations, else the unknown vector: "
                                                      f"{lacking[:5]}" if lacking else ""))
    expected = getattr(model_config, "kge_settings", {})
    differ = [f"{k} {embeddings.settings.get(k)} ({v})" for k, v in expected.items()
              if (embeddings.settings.get(k, 0) < v if k == "steps" else embeddings.settings.get(k) != v)]
    if differ:
        log(f"note: these KG embeddings differ from {model_config.name}'s (in brackets): {', '.join(differ)}; "
            f"kge.py's defaults make {model_config.name}'s")
    return vocab, kb, embeddings


def knowledge_base(args, rows, vocab, config, log):
    """The KB triples: --kb, else the data's triples.csv, else the distinct triples of the train and valid rows."""
    default = os.path.join(args.data_dir, "triples.csv")
    source = args.kb or (default if os.path.isfile(default) else None)
    triples = read_kb(source) if source else training_kb(rows)
    if source:
        shared_names(triples, vocab, source, log)
    beyond = beyond_classes(triples, vocab)
    config["kb_triples"] = len(triples)
    log(f"knowledge base: {len(triples)} triples from {source or 'the train and valid rows'}"
        + (f"; {beyond} of them name a head, relation or tail no train or valid row has (predicted only through "
           f"the knowledge base)" if beyond else ""))
    return triples


def say_edited_kb(kb_triples, data_kb, run_dir):
    """Says where the data's triples.csv (data_kb) differs from the knowledge base a run keeps (kb_triples, its
    kb.csv, which it reads), and how to read the data's instead."""
    if not os.path.isfile(data_kb):
        return
    try:
        edited = set(read_kb(data_kb))
    except util.DataError:
        return  # it is not the run's to read; --kb reports its faults
    own = set(kb_triples)
    if edited != own:
        print(f"note: {data_kb} differs from the knowledge base {run_dir} was trained with ({len(edited - own)} "
              f"facts only there, {len(own - edited)} only in {run_dir}/{KB_FILE}, which is used); give --kb "
              f"{data_kb} to answer from it.")


def save_run_knowledge(run_dir, vocab, kb, kge_dir):
    """knowledge.json, kb.csv and a copy of the KG embeddings (kge.py's files) in the run directory, which then needs
    neither the data's files nor --kge_dir to be used."""
    util.write_json(os.path.join(run_dir, VOCAB_FILE), {**vocab.to_json(), "kge_dir": kge_dir})
    if kb is not None:
        write_kb(os.path.join(run_dir, KB_FILE), kb)
    if kge_dir:
        os.makedirs(os.path.join(run_dir, KGE_DIR), exist_ok=True)
        for name in kge.OUTPUT_FILES:
            with open(os.path.join(kge_dir, name), "rb") as f:
                util.atomic_write(os.path.join(run_dir, KGE_DIR, name), f.read())


def load_run_knowledge(run_dir, model_config):
    """(vocabularies, KB triples or None, KG embeddings or None) of a knowledge run, from its knowledge.json, kb.csv
    and kge/; (None, None, None) for a model without a knowledge vocabulary."""
    if not model_config.vocab:
        return None, None, None
    path = os.path.join(run_dir, VOCAB_FILE)
    saved = util.read_json(path)
    if "heads" not in saved:
        raise util.CheckpointError(f"{path} was written by an earlier version of main.py (one entity vocabulary for "
                                   f"heads and tails); train the run again with this version.")
    embeddings = kge.load_kge(os.path.join(run_dir, KGE_DIR)) if os.path.isdir(os.path.join(run_dir, KGE_DIR)) else None
    if model_config.embeds and embeddings is None:
        raise util.CheckpointError(f"{run_dir} has no {KGE_DIR}/, the KG embeddings its model reads; restore it from a "
                                   f"copy of the run.")
    if not model_config.uses_kb():
        return KnowledgeVocab.from_json(saved), None, embeddings
    path = os.path.join(run_dir, KB_FILE)
    if not os.path.isfile(path):
        raise util.CheckpointError(f"{path} not found: a run whose model reads a knowledge base keeps the one it was "
                                   f"trained with there; restore it from a copy of the run.")
    return KnowledgeVocab.from_json(saved), read_kb(path), embeddings
