"""Data loading, categories, the seeded split and its reuse, and the sample generator."""
import pandas as pd
import pytest

import sample_data
from splits import SPLIT_FILE, make_split
from vqa_dataset import SPLITS, DataError, build_answer_vocab, read_data, select_rows


def write_csv(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "data.csv", index=False)


def test_sample_is_in_canonical_format(sample_dir):
    df = read_data(sample_dir)
    assert len(df) == 600
    assert set(df["question_type"]) == {"A", "B"}
    assert set(df["category"]) == {"vqa", "triple", "abstract"}
    assert set(df["lang"]) == {"ko"}
    # type A rows carry no outside knowledge; every type B row carries a triple or an abstract
    assert (df.loc[df["question_type"] == "A", "category"] == "vqa").all()
    assert (df.loc[df["question_type"] == "B", "category"] != "vqa").all()
    assert all((sample_dir / "image" / name).is_file() for name in df["image"].unique())


def test_sample_is_deterministic(tmp_path):
    for name in ("a", "b"):
        sample_data.generate(str(tmp_path / name), n_images=20, seed=3, progress=False)
    assert (tmp_path / "a" / "data.csv").read_bytes() == (tmp_path / "b" / "data.csv").read_bytes()
    assert (tmp_path / "a/image/scene_00007.jpg").read_bytes() == (tmp_path / "b/image/scene_00007.jpg").read_bytes()


def test_sample_english(tmp_path):
    sample_data.generate(str(tmp_path), n_images=10, lang="en", progress=False)
    df = read_data(tmp_path)
    assert set(df["lang"]) == {"en"}
    assert not df["question"].str.contains("[가-힣]").any() and not df["answer"].str.contains("[가-힣]").any()


def test_split_is_seeded_stratified_and_reused(sample_dir):
    df = read_data(sample_dir)
    assert (sample_dir / SPLIT_FILE).is_file()
    counts = df["split"].value_counts()
    assert counts["train"] == 480 and counts["valid"] == 60 and counts["test"] == 60
    # stratified: every frequent answer appears in every split
    frequent = df["answer"].value_counts()
    for answer in frequent[frequent >= 30].index:
        assert set(df.loc[df["answer"] == answer, "split"]) == {"train", "valid", "test"}
    # a second read reuses the saved split, and a fresh split with the same seed is identical
    assert (read_data(sample_dir)["split"] == df["split"]).all()
    assert (make_split(df) == df["split"].values).all()


def test_split_keeps_images_and_language_versions_together(tmp_path):
    """No image, and no Korean/English version of one question, spans two splits; the split stays stratified."""
    for lang in ("ko", "en"):  # the same scenes and question families in both languages
        sample_data.generate(str(tmp_path / lang), n_images=200, lang=lang, seed=1, progress=False,
                             held_out_facts=False)
    ko, en = (pd.read_csv(tmp_path / lang / "data.csv", dtype=str, keep_default_na=False) for lang in ("ko", "en"))
    assert (ko["image"] == en["image"]).all()
    bilingual = pd.concat([ko.assign(pair=range(len(ko))), en.assign(pair=range(len(en)))], ignore_index=True)
    (tmp_path / "bi").mkdir()
    bilingual.drop(columns="pair").to_csv(tmp_path / "bi" / "data.csv", index=False)
    df = read_data(tmp_path / "bi")
    assert (df.groupby("image")["split"].nunique() == 1).all()
    pairs = df.assign(pair=bilingual["pair"].values).groupby("pair")["split"].nunique()
    assert (pairs == 1).all()
    counts = df["split"].value_counts(normalize=True)
    assert counts["train"] == pytest.approx(0.8, abs=0.03) and counts["test"] == pytest.approx(0.1, abs=0.03)
    frequent = df["answer"].value_counts()
    for answer in frequent[frequent >= 100].index:  # stratified as far as the images allow
        assert set(df.loc[df["answer"] == answer, "split"]) == {"train", "valid", "test"}


def test_the_samples_held_out_facts_are_never_in_training_questions(tmp_path):
    """The knowledge base holds every colour's gem; train and valid questions ask only for some of them, test
    questions also for the others, whose answers no training question has; without held-out facts the sample is
    the earlier one."""
    sample_data.generate(str(tmp_path / "new"), n_images=400, seed=2, progress=False)
    df = read_data(tmp_path / "new")
    kb = set(pd.read_csv(tmp_path / "new" / "triples.csv").itertuples(index=False, name=None))
    held_out = {(sample_data.COLOURS[c][1], sample_data.RELATION_NAMES["gem"][0], sample_data.GEM_OF_COLOUR[c][0])
                for c in sample_data.HELD_OUT}
    assert held_out <= kb
    training = df[df["split"] != "test"]
    assert not set(training["triple"]) & {"|".join(t) for t in held_out}
    assert not set(training["answer"]) & {t for _, _, t in held_out}
    test = df[df["split"] == "test"]
    asked = test["triple"].isin({"|".join(t) for t in held_out})
    assert 0.15 < asked.sum() / (test["category"] == "triple").sum() < 0.45  # about a quarter of its triple rows
    assert (df.groupby("image")["split"].nunique() == 1).all()
    sample_data.generate(str(tmp_path / "old"), n_images=400, seed=2, progress=False, held_out_facts=False)
    old = pd.read_csv(tmp_path / "old" / "data.csv", dtype=str)
    assert "split" not in old and not old["question"].str.contains("보석").any()


def test_sample_split_has_no_image_in_two_splits(sample_dir):
    assert (read_data(sample_dir).groupby("image")["split"].nunique() == 1).all()


def test_the_split_is_never_changed_only_extended_by_new_rows(tmp_path, sample_dir, capsys):
    """Rows reordered, removed or added: every row keeps its label; a new row on an image the split holds joins
    that image's split, new images are split by image. A split.csv this repo did not write is never changed."""
    rows = pd.read_csv(sample_dir / "data.csv", dtype=str, keep_default_na=False)
    write_csv(tmp_path, rows)
    first = read_data(tmp_path).set_index(["image", "question"])["split"]
    test_image = first[first == "test"].index[0][0]
    added = pd.DataFrame({"image": [test_image, "new.jpg"], "question": ["another question", "q"], "answer": "a"})
    write_csv(tmp_path, pd.concat([rows.iloc[:0:-1], added]))  # reversed, the first row gone, two rows added
    second = read_data(tmp_path).set_index(["image", "question"])["split"]
    assert (second.loc[first.index[1:]] == first.iloc[1:]).all()
    assert second[(test_image, "another question")] == "test" and second[("new.jpg", "q")] in SPLITS
    assert "2 rows of data.csv are new since the split was made" in capsys.readouterr().out
    saved = pd.read_csv(tmp_path / SPLIT_FILE, dtype=str).set_index(["image", "question"])["split"]
    assert saved.sort_index().equals(second.sort_index())

    (tmp_path / SPLIT_FILE).write_text("image,question,split\na.jpg,q,test\n")  # a user's own
    with pytest.raises(DataError, match="was not written by this repo .* so it is not changed"):
        read_data(tmp_path)
    assert (tmp_path / SPLIT_FILE).read_text() == "image,question,split\na.jpg,q,test\n"


def test_explicit_split_and_categories(tmp_path):
    write_csv(tmp_path, [
        {"image": "a.jpg", "question": "q1", "answer": "x", "triple": "h|r|t", "abstract": "", "split": "train"},
        {"image": "b.jpg", "question": "q2", "answer": "y", "triple": "", "abstract": "text", "split": "valid"},
        {"image": "c.jpg", "question": "q3", "answer": "x", "triple": "", "abstract": "", "split": "test"},
    ])
    df = read_data(tmp_path)
    assert df["category"].tolist() == ["triple", "abstract", "vqa"]
    assert df["question_type"].tolist() == ["B", "B", "A"]  # inferred when the column is absent
    assert df["split"].tolist() == ["train", "valid", "test"]
    assert not (tmp_path / SPLIT_FILE).exists()
    assert select_rows(df, "test")["question"].tolist() == ["q3"]
    assert select_rows(df, infer_data="abstract")["question"].tolist() == ["q2"]
    assert select_rows(df, train_data="B")["question"].tolist() == ["q1", "q2"]


def test_answer_vocab_is_by_frequency():
    df = pd.DataFrame({"answer": ["b", "a", "b", "c", "a", "b"]})
    assert build_answer_vocab(df) == ["b", "a", "c"]


def test_missing_column_is_a_clear_error(tmp_path):
    write_csv(tmp_path, [{"image": "a.jpg", "question": "q"}])
    with pytest.raises(DataError, match=r"missing column\(s\) \['answer'\]"):
        read_data(tmp_path)


def test_missing_data_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="download.py --sample"):
        read_data(tmp_path)


def test_image_cache_matches_decoding_and_is_rebuilt_when_images_change(tmp_path, sample_dir):
    import os
    import shutil

    import numpy as np

    from images import ImageCache, load_image

    shutil.copytree(sample_dir / "image", tmp_path / "image")
    names = ["scene_00002.jpg", "scene_00000.jpg", "scene_00001.jpg", "scene_00000.jpg"]
    cache = ImageCache(tmp_path, names, 32, progress=False)
    assert cache.array.shape == (3, 32, 32, 3) and cache.array.dtype == np.uint8
    for name in set(names):
        assert np.array_equal(cache.array[cache.row[name]], load_image(tmp_path / "image" / name, 32))
    built = os.path.getmtime(cache.path)
    again = ImageCache(tmp_path, names, 32, progress=False)
    assert again.path == cache.path and os.path.getmtime(again.path) == built  # reused, not rebuilt
    assert ImageCache(tmp_path, names, 48, progress=False).path != cache.path  # another size, another cache
    shutil.copy(tmp_path / "image" / "scene_00005.jpg", tmp_path / "image" / "scene_00001.jpg")
    changed = ImageCache(tmp_path, names, 32, progress=False)
    assert changed.path != cache.path
    assert np.array_equal(changed.array[changed.row["scene_00001.jpg"]],
                          load_image(tmp_path / "image" / "scene_00005.jpg", 32))


def test_missing_image_names_the_file(tmp_path, sample_dir):
    from images import ImageCache

    (tmp_path / "image").mkdir()
    with pytest.raises(DataError, match="nowhere.jpg"):
        ImageCache(tmp_path, ["nowhere.jpg"], 32, progress=False)
