"""kge.py: knowledge-graph embeddings trained with PyKEEN on a tiny synthetic graph, exported as safetensors + JSON."""
import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_script
from safetensors import safe_open

import kge
import util

# Tiny and quick: a few epochs of small embeddings on the CPU.
TINY = ["--dim", "8", "--epochs", "2", "--batch_size", "64", "--device", "cpu"]


def synthetic_triples(prefix="e", n_entities=40, n_relations=3):
    """~150 distinct triples: every entity links to others by each relation, plus a few extra links."""
    triples = [(f"{prefix}{a}", f"r{r}", f"{prefix}{(a * (r + 2) + 1) % n_entities}")
               for a in range(n_entities) for r in range(n_relations)]
    triples += [(f"{prefix}{a}", "r0", f"{prefix}{(a + 7) % n_entities}") for a in range(0, n_entities, 1)]
    return list(dict.fromkeys(triples))[:150]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def triples_csv(tmp_path_factory):
    rows = synthetic_triples() + [("", "", "")]  # a wholly empty row: skipped and counted, not an error
    return write_csv(tmp_path_factory.mktemp("kge") / "triples.csv", ["h", "r", "t"], rows)


def train(triples_csv, out, *extra):
    return kge.main(["--triples", str(triples_csv), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def convkb_run(triples_csv, tmp_path_factory):
    return Path(train(triples_csv, tmp_path_factory.mktemp("convkb")))


def test_same_seed_gives_identical_embeddings(triples_csv, convkb_run, tmp_path):
    again = kge.load_kge(train(triples_csv, tmp_path / "again"))
    first = kge.load_kge(convkb_run)
    assert torch.equal(first.entity, again.entity) and torch.equal(first.relation, again.relation)
    assert first.entity_to_id == again.entity_to_id and first.relation_to_id == again.relation_to_id
    other = kge.load_kge(train(triples_csv, tmp_path / "other", "--seed", "1"))
    assert not torch.equal(first.entity, other.entity)  # the seed is what makes them equal


def test_files_load_without_pickle_and_cover_the_file(convkb_run):
    with safe_open(f"{convkb_run}/embeddings.safetensors", framework="pt") as f:
        assert {"entity", "relation"} <= set(f.keys())  # and ConvKB's scoring function, interaction.*
        assert all(k in ("entity", "relation") or k.startswith("interaction.") for k in f.keys())
        entity = f.get_tensor("entity")
    with open(f"{convkb_run}/entity_to_id.json", encoding="utf-8") as f:
        entity_to_id = json.load(f)
    triples = synthetic_triples()
    assert set(entity_to_id) == {h for h, _, _ in triples} | {t for _, _, t in triples}
    assert entity.shape == (len(entity_to_id), 8) and entity.dtype == torch.float32

    loaded = kge.load_kge(convkb_run)
    assert loaded.entity.shape[0] == len(loaded.entity_to_id) == 40
    assert loaded.relation.shape[0] == len(loaded.relation_to_id) == 3
    assert set(loaded.relation_to_id) == {"r0", "r1", "r2"}
    assert loaded.settings["num_triples"] == len(triples) and loaded.settings["model"] == "convkb"


def test_all_triples_are_trained_and_a_held_out_slice_only_when_asked(triples_csv, convkb_run, tmp_path):
    settings = kge.load_kge(convkb_run).settings
    assert settings["train_triples"] == settings["num_triples"] and "metrics" not in settings  # GEL-VQA's: all
    settings = kge.load_kge(train(triples_csv, tmp_path, "--eval_fraction", "0.1")).settings
    metrics = settings["metrics"]
    for name in ("mrr", "hits_at_1", "hits_at_10"):
        assert 0 <= metrics[name] <= 1
    assert 0 < metrics["held_out_triples"] < settings["num_triples"]
    assert metrics["held_out_triples"] + settings["train_triples"] == settings["num_triples"]


@pytest.mark.parametrize("model", ["convkb", "transe", "rotate"])
def test_link_prediction_uses_the_models_own_scores(triples_csv, tmp_path, model):
    """tail_scores, rebuilt from the saved tensors, gives the true tails of training triples high ranks once the
    embeddings have learned them; and the same scores twice (no randomness, no pickle)."""
    out = train(triples_csv, tmp_path, "--model", model, "--epochs", "20", "--lr", "0.03", "--dim", "16")
    loaded = kge.load_kge(out)
    triples = synthetic_triples()[:60]
    heads = torch.tensor([loaded.entity_to_id[h] for h, _, _ in triples])
    relations = torch.tensor([loaded.relation_to_id[r] for _, r, _ in triples])
    tails = torch.tensor([loaded.entity_to_id[t] for _, _, t in triples])
    scores = loaded.tail_scores(heads, relations)
    assert scores.shape == (60, 40) and torch.equal(scores, loaded.tail_scores(heads, relations))
    ranks = (scores > scores.gather(1, tails[:, None])).sum(1) + 1
    assert ranks.float().mean() < 10  # chance: 20.5


def test_convkb_codes_are_zero_mean_as_the_papers(convkb_run):
    """Xavier initialisation (as GEL-VQA's torchkge ConvKB), not PyKEEN's U[0, 1), whose codes are all alike
    (cosine about 0.75 between any two); two epochs at lr 1e-4 leave them near their initialisation."""
    entity = kge.load_kge(convkb_run).entity
    cosine = torch.nn.functional.normalize(entity, dim=-1) @ torch.nn.functional.normalize(entity, dim=-1).T
    off_diagonal = cosine[~torch.eye(len(entity), dtype=torch.bool)]
    assert (entity < 0).float().mean() > 0.3 and off_diagonal.mean().abs() < 0.1


@pytest.mark.parametrize("model, width, complex_", [("rotate", 16, True), ("transe", 8, False)])
def test_stored_widths(triples_csv, tmp_path, model, width, complex_):
    loaded = kge.load_kge(train(triples_csv, tmp_path, "--model", model))
    assert loaded.entity.shape == (40, width) and loaded.relation.shape == (3, width)
    assert loaded.entity.dtype == torch.float32 and loaded.entity.is_contiguous()
    assert loaded.settings["complex"] is complex_ and loaded.settings["entity_width"] == width


def test_data_dir_reads_triple_column_then_triples_csv(tmp_path, capsys):
    triples = synthetic_triples()
    cells = ["|".join(triples[0]) + ";" + "|".join(triples[1])] + ["|".join(t) for t in triples[2:]]  # two in one
    cells += ["", cells[5]]  # a row without a triple (skipped, counted) and a repeated triple (merged)
    write_csv(tmp_path / "data.csv", ["image", "question", "answer", "triple"],
              [(f"{i}.jpg", "q", "a", cell) for i, cell in enumerate(cells)])
    loaded = kge.load_kge(kge.main(["--data_dir", str(tmp_path), "--out", str(tmp_path / "from_data"), *TINY]))
    assert loaded.settings["num_triples"] == len(triples) and loaded.settings["source"].endswith("data.csv")
    assert {triples[0][0], triples[1][0]} <= set(loaded.entity_to_id)
    printed = capsys.readouterr().out
    assert "skipped 1 rows without a triple" in printed and "1 repeated triples merged" in printed

    other = synthetic_triples(prefix="x")
    write_csv(tmp_path / "triples.csv", ["h", "r", "t"], other)
    loaded = kge.load_kge(kge.main(["--data_dir", str(tmp_path), "--out", str(tmp_path / "from_triples"), *TINY]))
    assert loaded.settings["source"].endswith("triples.csv") and "x0" in loaded.entity_to_id
    assert loaded.settings["num_triples"] == len(other)


def bad_inputs(tmp_path):
    yield write_csv(tmp_path / "no_t.csv", ["h", "r", "tail"], [("a", "r", "b")]), ["no_t.csv", "'t'"]
    (tmp_path / "empty.csv").write_text("")
    yield tmp_path / "empty.csv", ["empty.csv", "empty"]
    yield write_csv(tmp_path / "hole.csv", ["h", "r", "t"], [("a", "r", "b"), ("c", "", "d")]), \
        ["hole.csv", "row 3", "column r"]
    yield write_csv(tmp_path / "header.csv", ["h", "r", "t"], []), ["header.csv", "the file has no rows"]
    yield tmp_path / "absent.csv", ["absent.csv", "not found"]


def test_bad_input_is_a_clear_error(tmp_path):
    for path, words in bad_inputs(tmp_path):
        result = run_script("kge.py", "--triples", path, "--out", tmp_path / "out", *TINY)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: ") and all(w in result.stderr for w in words), result.stderr

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_csv(data_dir / "data.csv", ["image", "question", "answer", "triple"],
              [("1.jpg", "q", "a", "a|r|b"), ("2.jpg", "q", "a", "a|r|b;c|r")])
    result = run_script("kge.py", "--data_dir", data_dir, "--out", tmp_path / "out", *TINY)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert all(w in result.stderr for w in ["data.csv", "row 3", "column triple", "'c|r'"]), result.stderr


def test_broken_directory_names_file_and_key(convkb_run, tmp_path):
    from safetensors.torch import save_file

    for name in ("embeddings.safetensors", "entity_to_id.json", "settings.json"):
        (tmp_path / name).write_bytes((convkb_run / name).read_bytes())
    with pytest.raises(util.CheckpointError, match="relation_to_id.json"):
        kge.load_kge(tmp_path)
    (tmp_path / "relation_to_id.json").write_bytes((convkb_run / "relation_to_id.json").read_bytes())
    save_file({"entity": kge.load_kge(convkb_run).entity}, str(tmp_path / "embeddings.safetensors"))
    with pytest.raises(util.CheckpointError, match="`relation`"):
        kge.load_kge(tmp_path)


def test_importing_kge_does_not_import_pykeen():
    result = run_script("-c", "import sys, kge; assert 'pykeen' not in sys.modules, 'pykeen imported'")
    assert result.returncode == 0, result.stderr
