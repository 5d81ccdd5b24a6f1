"""Web demo: upload an image or pick a test sample, ask a question, see the top answers with probabilities.

    pip install -r requirements-demo.txt
    python demo.py --model_path results/all_1228_1734                  # then open http://127.0.0.1:7860
    python demo.py --model_path results/all_1228_1734 --host 0.0.0.0   # reachable from other machines too

The model is loaded once; answers come from model.answer, as inference_each.py's, so they are the same as on the
command line.
"""
import argparse
import os
import sys

import kb
import util
from answering import answer
from encoders import OfflineError
from models import load_run
from oracles import OracleTextConfig
from vqa_dataset import DataError, read_test_split


def load_samples(config, run_dir, data_dir, n):
    """[(label, image path, question, gold, knowledge)] for the first n test rows of the run's split (knowledge: the
    row's triple, else its abstract); [] when the run's data is not on this machine, said."""
    try:
        data_dir, test = read_test_split(config, run_dir, data_dir)
    except (DataError, util.CheckpointError, OSError) as e:
        print(f"note: no test samples to pick from: {e}")
        return []
    samples = []
    for i, row in enumerate(test.head(n).itertuples()):
        path = os.path.join(data_dir, "image", row.image)
        if os.path.isfile(path):
            samples.append((f"{i}: {row.question}  [{row.image}]", path, row.question, row.answer,
                            row.triple or row.abstract))
    return samples


def refusal(gr, message):
    """The error a refused request shows on the page; the console gets one line, not a traceback."""
    print(f"refused: {message}", flush=True)
    return gr.Error(message, print_exception=False)


def refuse_with_reason(gr, preprocess):
    """gradio's image preprocessing, where an upload it cannot open as an image is refused with the reason instead
    of a bare "Error". (An instance attribute: a subclass of a gradio component makes gradio write a .pyi file.)"""
    def checked(payload):
        try:
            return preprocess(payload)
        except Exception as e:  # PIL's errors for files that are not images, decompression bombs
            name = getattr(payload, "orig_name", None) or "the upload"
            raise refusal(gr, f"{name} is not an image this demo can read ({type(e).__name__}: {e}). "
                          f"Upload a JPEG or PNG.") from None
    return checked


def build_app(gr, predict, samples, top_k, model_config):
    """The page: sample picker, image, question (and, for the oracles, the knowledge) and button on the left; gold
    answer, top answers (and, for a model that predicts one, the predicted triple) on the right."""
    with gr.Blocks(title="VQA_NIA demo") as app:
        gr.Markdown("## VQA_NIA: knowledge-based visual question answering\n"
                    "Upload an image or pick a test sample, type a question (Korean or English) and press Answer.")
        with gr.Row():
            with gr.Column():
                sample = gr.Dropdown([(s[0], i) for i, s in enumerate(samples)], value=None, label="test sample",
                                     elem_id="sample", visible=bool(samples))
                # filepath without a mode conversion: the uploaded file reaches the model as is, not re-encoded
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="image",
                                 elem_id="image", height=320)
                image.preprocess = refuse_with_reason(gr, image.preprocess)
                question = gr.Textbox(label="question", placeholder="이미지 속 원은 무슨 색이야?", elem_id="question")
                known = gr.Textbox(label="knowledge: a triple head|relation|tail" + (
                    " or a text" if isinstance(model_config, OracleTextConfig) else ""), elem_id="knowledge",
                    visible=model_config.gold)
                button = gr.Button("Answer", variant="primary", elem_id="submit")
            with gr.Column():
                gold = gr.Textbox(label="gold answer (test samples only)", interactive=False, elem_id="gold")
                label = gr.Label(num_top_classes=top_k, label=f"top-{top_k} answers", elem_id="answers")
                triple = gr.Textbox(label="predicted knowledge", interactive=False, elem_id="triple",
                                    visible=model_config.predicts)

        def pick(i):
            if i is None:
                return gr.update(), gr.update(), gr.update(), gr.update()
            _, path, text, answer_text, knowledge_text = samples[i]
            return path, text, answer_text, knowledge_text

        sample.change(pick, sample, [image, question, gold, known])
        image.upload(lambda: ("", ""), None, [gold, known])  # an uploaded image has no gold answer or knowledge
        button.click(predict, [image, question, known], [label, triple])
        question.submit(predict, [image, question, known], [label, triple])
    return app


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="run directory or its .safetensors weights (default: newest run)")
    p.add_argument("--results_dir", default="results", help="where to look for the newest run")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 127.0.0.1 keeps the demo on this machine, "
                        "0.0.0.0 opens it to the network")
    p.add_argument("--port", type=util.at_least(1), default=7860, help="port to listen on")
    p.add_argument("--data_dir", default=None, help="data directory for the test samples (default: the run's)")
    p.add_argument("--n_samples", type=util.at_least(0), default=100, help="test samples offered in the picker")
    p.add_argument("--top_k", type=util.at_least(1), default=5, help="number of answers to show")
    p.add_argument("--kb", default=None, help=kb.KB_OPTION_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    args = p.parse_args()

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a machine that may be offline
    try:
        import gradio as gr
    except ImportError:
        sys.exit("error: the web demo needs gradio, which requirements.txt leaves out. "
                 "Install it with: pip install -r requirements-demo.txt")

    try:
        device = util.pick_device(args.device)
        model, tokenizer, config, answers, run_dir = load_run(args.model_path, device, args.results_dir, args.kb)
    except (OfflineError, DataError, util.CheckpointError, util.UsageError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    samples = load_samples(config, run_dir, args.data_dir, args.n_samples)
    print(f"model: {run_dir} ({len(answers)} answers), {len(samples)} test samples to pick from")

    def predict(image_path, question, knowledge):
        if not image_path:
            raise refusal(gr, "Upload an image or pick a test sample first.")
        knowledge = knowledge or ""  # gradio gives None for a hidden, untouched box
        # oracle_text reads a triple or a text: one with a '|' is meant as a triple, and read as one
        text = isinstance(model.config, OracleTextConfig) and "|" not in knowledge
        try:
            top = answer(model, tokenizer, config, answers, image_path, question or "", device, args.top_k,
                         "" if text else knowledge, knowledge if text else "")
        except DataError as e:  # an empty question, an image that cannot be read: say why
            raise refusal(gr, str(e)) from None
        return dict(top), " | ".join(top.triple) if top.triple else "(none)"

    app = build_app(gr, predict, samples, args.top_k, model.config)
    # gradio serves only files it is told about: the sample images live in the data directory
    app.launch(server_name=args.host, server_port=args.port, show_error=True,
               allowed_paths=sorted({os.path.dirname(sample[1]) for sample in samples}))


if __name__ == "__main__":
    main()
