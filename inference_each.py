"""Answer one question about one image with a trained run: prints the top-5 answers with probabilities.

    python inference_each.py --model_path results/all_1228_1734 --image img.jpg --question "이미지 속 원은 무슨 색이야?"
    python inference_each.py --model_path results/all_1228_1734 --index 12     # a test sample (default: a random one)
    python inference_each.py --index 12 --save_png answer.png                   # also draw image, question and answers
"""
import argparse
import os
import random
import sys
import unicodedata

import kb
import util
from answering import answer, knowledge_input, question_tokens
from encoders import OfflineError
from models import load_run
from oracles import OracleTextConfig
from vqa_dataset import DataError, read_test_split


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="run directory or its .safetensors weights (default: newest run)")
    p.add_argument("--image", default=None, help="image file (with --question)")
    p.add_argument("--question", default=None, help="question text (with --image)")
    p.add_argument("--index", type=util.at_least(0), default=None,
                   help="row of the test split to answer (default: random)")
    p.add_argument("--data_dir", default=None, help="data directory for --index (default: the run's)")
    p.add_argument("--seed", type=int, default=None, help="seed for picking the random test sample")
    p.add_argument("--top_k", type=util.at_least(1), default=5, help="number of answers to show")
    p.add_argument("--results_dir", default="results", help="where to look for the newest run")
    p.add_argument("--kb", default=None, help=kb.KB_OPTION_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--triple", default="",
                   help="with --image and --question, for the oracles (oracle_triple, oracle_text): the question's "
                        "knowledge triple, head|relation|tail (a test sample's own is used with --index)")
    p.add_argument("--abstract", default="",
                   help="with --image and --question, for oracle_text: the question's knowledge text")
    p.add_argument("--save_png", default=None, metavar="OUT.png",
                   help="also draw the image, question, gold answer and top answers to this PNG")
    p.add_argument("--force", action="store_true", help="replace a --save_png file that this repo did not write")
    args = p.parse_args()
    if (args.image is None) != (args.question is None):
        p.error("--image and --question go together")
    if (args.triple or args.abstract) and args.image is None:
        p.error("--triple and --abstract go with --image and --question; a test sample (--index) is answered with its "
                "own knowledge")

    try:
        if args.save_png:  # checked before the work: a file this repo did not write is not replaced
            png = util.OutputFolder(os.path.dirname(args.save_png) or ".", args.force, "--save_png")
            png.check([os.path.basename(args.save_png)])
        device = util.pick_device(args.device)
        model, tokenizer, config, answers, run_dir = load_run(args.model_path, device, args.results_dir, args.kb)
        gold, (triple, abstract) = None, given_knowledge(args, model.config)
        if args.image is not None:
            image_path, question = args.image, args.question
        else:
            data_dir, test = read_test_split(config, run_dir, args.data_dir)
            if len(test) == 0:
                sys.exit(f"error: {data_dir}/data.csv has no test rows for train_data {config['train_data']}")
            index = args.index if args.index is not None else random.Random(args.seed).randrange(len(test))
            if not 0 <= index < len(test):
                sys.exit(f"error: --index {index} is outside the test split (0..{len(test) - 1})")
            row = test.iloc[index]
            image_path, question, gold = os.path.join(data_dir, "image", row["image"]), row["question"], row["answer"]
            triple, abstract = row["triple"], row["abstract"]
            print(f"test sample {index}: type {row['question_type']}, {row['category']}")
        top = answer(model, tokenizer, config, answers, image_path, question, device, args.top_k, triple, abstract)
        n_tokens = question_tokens(tokenizer, question)
        if n_tokens > config["max_token"]:
            print(f"note: the question has {n_tokens} tokens; the model reads its first {config['max_token']} "
                  f"(--max_token of the run)")
    except (OfflineError, DataError, util.CheckpointError, util.UsageError, FileNotFoundError, ValueError,
            OSError) as e:
        sys.exit(f"error: {e}")
    print(f"image:    {image_path}")
    print(f"question: {question}")
    if gold is not None:
        print(f"gold:     {gold}{'' if gold in answers else ' (never seen in training)'}")
    if model.config.gold:
        print(f"knowledge: {triple or abstract or '(none)'}")
    if model.config.predicts:
        print(f"predicted knowledge: {' | '.join(top.triple) if top.triple else '(none)'}"
              + (f"  (gold: {triple})" if triple else ""))
    for rank, (text, prob) in enumerate(top, 1):
        source = top.sources[rank - 1] if top.sources else "vocabulary"
        print(f"  {rank}. {pad(text, 20)} {100 * prob:6.2f}%"
              + ("" if source == "vocabulary" else f"  (copied: {source})"))
    if args.save_png:
        import plots  # matplotlib only when asked

        try:
            plots.plot_answer(image_path, question, gold, top, args.save_png)
            png.record([os.path.basename(args.save_png)])
        except (OSError, util.CheckpointError) as e:
            sys.exit(f"error: {e}")
        print(f"wrote {args.save_png}")


def given_knowledge(args, model_config):
    """(triple, abstract) of --triple and --abstract, checked (answering.knowledge_input); knowledge the run's model
    does not read is a UsageError."""
    if (args.triple or args.abstract) and not model_config.gold:
        raise util.UsageError(f"--triple and --abstract give the gold knowledge that the oracles read; "
                              f"{model_config.name} reads none (it answers from the image and question alone"
                              f"{', predicting the triple' if model_config.predicts else ''}).")
    if args.abstract and not isinstance(model_config, OracleTextConfig):
        raise util.UsageError(f"--abstract: {model_config.name} reads a triple (--triple), not a text.")
    return knowledge_input(args.triple, args.abstract)


def pad(text, width):
    """text padded with spaces to width terminal columns: Hangul and other wide characters take two, combining marks
    none (so that Korean and English answers line up)."""
    columns = sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, width - columns)


if __name__ == "__main__":
    main()
