"""The BOK-VQA proxy comparison (the README's table): BOK-VQA's real questions, triples and answers with one
colour-code image per head entity (../shared/bok-proxy/make_proxy.py; not the real benchmark, whose images are not
public), fold 5 of the training CSVs as the test split.

    python tools/bok_proxy.py                    # data/bok_proxy/, results/bok_proxy/{ko,en,bi}/comparison.md
    python tools/bok_proxy.py --langs ko --seeds 42 --models baseline gel_vqa

Builds the proxy and imports it for ko, en and bi (download.py --from_csv), writes its knowledge base kb.csv (the
distinct triples of all its rows, standing in for BOK-VQA's all_triple.csv, which holds every question's triple),
trains GEL-VQA's KG embeddings on it (kge.py's defaults), then runs tools/compare.py per language. Every step that
is done is kept, so an interrupted comparison continues where it stopped.
"""
import argparse
import os
import subprocess
import sys

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = {"ko": [42, 43, 44], "en": [42], "bi": [42]}  # ko: the mean of three; en and bi one each
MODELS = ["baseline", "gel_vqa", "hilink", "hilink_kb", "oracle_triple"]  # the README's table


def python(*args):
    print(" ".join(map(str, args)), flush=True)
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True)


def build(shared, data):
    """The proxy's CSVs and images, the data of each language and the knowledge base."""
    raw = os.path.join(data, "raw")
    if not os.path.isfile(os.path.join(raw, "devtest_en.csv")):
        python(os.path.join(shared, "bok-proxy", "make_proxy.py"), raw)
    files = {"ko": ["ko"], "en": ["en"], "bi": ["ko", "en"]}
    for lang, langs in files.items():
        if not os.path.isfile(os.path.join(data, lang, "data.csv")):
            python("download.py", "--from_csv", *[os.path.join(raw, f"train_{x}.csv") for x in langs],
                   "--test_csv", *[os.path.join(raw, f"devtest_{x}.csv") for x in langs],
                   "--image_dir", os.path.join(raw, "img"), "--out", os.path.join(data, lang))
    kb = os.path.join(data, "kb.csv")
    if not os.path.isfile(kb):
        rows = pd.concat([pd.read_csv(os.path.join(raw, f"{part}_ko.csv"), dtype=str, keep_default_na=False)
                          for part in ("train", "devtest")])
        rows[["h", "r", "t"]].drop_duplicates().to_csv(kb, index=False)
    return kb


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"), help="the folder with bok-proxy/")
    p.add_argument("--data", default="data/bok_proxy", help="where the proxy's data go")
    p.add_argument("--out", default="results/bok_proxy", help="where the KG embeddings, runs and tables go")
    p.add_argument("--langs", nargs="+", default=list(SEEDS), choices=list(SEEDS), help="languages to compare")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 3 for ko, 1 for en and bi)")
    p.add_argument("--models", nargs="+", default=MODELS, help="models (names or configs/ file stems)")
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.shared, "bok-proxy", "make_proxy.py")):
        sys.exit(f"error: {args.shared}/bok-proxy/make_proxy.py not found: the proxy needs the BOK-VQA CSVs of "
                 f"../shared (not part of this repo); give --shared.")
    kb = build(args.shared, args.data)
    kge_dir = os.path.join(args.out, "kge_gel_vqa")
    if not os.path.isfile(os.path.join(kge_dir, "settings.json")):
        python("kge.py", "--triples", kb, "--out", kge_dir)
    for lang in args.langs:
        python("tools/compare.py", "--data_dir", os.path.join(args.data, lang), "--kge_dir", kge_dir, "--kb", kb,
               "--out", os.path.join(args.out, lang), "--seeds", *(args.seeds or SEEDS[lang]), "--models", *args.models)


if __name__ == "__main__":
    main()
