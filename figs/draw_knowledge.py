"""Draws how knowledge enters the knowledge models (figs/gel_vqa.png, figs/hilink.png) from their modules: each box
names the module of gel.py, hilink.py or triples.py it stands for, read off a model built on the meta device (shapes
only, no download), so that a renamed module stops this script instead of drawing a stale picture.

    python figs/draw_knowledge.py            # or: make figs
"""
import argparse
import os
import sys

import torch
from matplotlib import rc_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import main  # noqa: E402
import plots  # noqa: E402
from draw_model import Diagram  # noqa: E402
from encoders import xlmr_base_config  # noqa: E402
from models import MODELS, build_model, run_config  # noqa: E402

SIZES = [900, 30, 1200]  # heads, relations, tails: BOK-VQA's order of magnitude


def build(name):
    """The model name with main.py's defaults (--preset bokvqa: the papers'), on the meta device."""
    args = main.parse_args(["--preset", "bokvqa", "--model", name] + (["--kge_dir", "k"] if name == "gel_vqa" else []))
    config = {**run_config(args, args.model_config, 1), "knowledge_sizes": SIZES, "kge_widths": [256, 256]}
    with torch.device("meta"):
        return build_model(config, xlmr_base_config())


def encoders(d, y):
    """The question and image inputs and encoders every model shares; (question feature box, image feature box)."""
    q = d.box(3, y, "question", "input")
    i = d.box(9, y, "image", "input")
    q_f = d.box(3, y + 1.4, "text_encoder → q_f", "text")
    i_f = d.box(9, y + 1.4, "image_encoder → image_proj → i_f", "image")
    d.arrow(q, q_f), d.arrow(i, i_f)
    return q_f, i_f


def draw_gel_vqa(path, dpi):
    model = build("gel_vqa")
    heads, codes, injection = model.triple_heads, model.codes, model.injection
    d = Diagram()
    q_f, i_f = encoders(d, 1.4)
    fused = d.box(8, 4.4, "fused = i_f ⊙ q_f", "fusion")
    d.arrow(q_f, fused), d.arrow(i_f, fused)
    h = d.box(8, 6.0, f"triple_heads.h: Linear → {heads.h.out_features} heads\n(from hidden(fused))", "head", h=1.0)
    rt = d.box(3, 6.0, f"triple_heads.r, .t: Linear → {heads.r.out_features} relations,\n{heads.t.out_features} "
                       f"tails (from hidden(q_f))", "head", h=1.0)
    d.arrow(fused, h), d.arrow(q_f, rt)
    triple = d.box(5.5, 7.7, "argmax: the predicted (h, r, t)\n(no knowledge → passes unchanged)", "head", h=1.0)
    d.arrow(h, triple), d.arrow(rt, triple)
    code = d.box(5.5, 9.3, f"codes: frozen ConvKB k = [h; r; t],\n{codes.width} wide (kge.py)", "text", h=1.0)
    d.arrow(triple, code)
    mixed = d.box(5.5, 10.9, f"injection ({injection.fusion}): fused ⊙ k", "fusion")
    d.arrow(code, mixed)
    answer = d.box(5.5, 12.5, "hidden → classifier → answer", "head")
    d.arrow(mixed, answer)
    d.fit("gel_vqa: GEL-VQA (loss: answer + h + r + t; training crops a random 224 of 356)")
    return plots.save_png(d.fig, path, dpi=dpi)


def kb_note(config):
    """What hilink_kb changes in this picture, read from its registered settings."""
    changes = ["h, r, t each from its own head\nin place of the chains" if config.triple_head != "cascade" else "",
               "i ⊙ t in place of Linear([i; t])" if config.fusion == "mul" else "",
               "the triple snapped to the\nknowledge base's most probable fact" if config.kb_constrained else "",
               "a copy gate that can answer\nthe triple's head or tail" if config.answer_from_kb else ""]
    return "hilink_kb:\n" + ";\n".join(c for c in changes if c)


def draw_hilink(path, dpi):
    model = build("hilink")
    heads = model.triple_heads
    d = Diagram(width=14)
    q = d.box(3, 1.4, "question", "input")
    i = d.box(11, 1.4, "image", "input")
    q_f = d.box(3, 2.8, "text_encoder → q_f", "text")
    i_f = d.box(11, 2.8, "image_encoder (frozen when pretrained) → i_f", "image", w=5.2)
    d.arrow(q, q_f), d.arrow(i, i_f)
    z_iq = d.box(8.1, 4.4, "question_image: Linear([i_f; q_f]) → LN → ReLU", "fusion", w=5.2)
    z_q = d.box(3, 4.4, "linear: Linear(q_f) → LN → ReLU", "text")
    d.arrow(q_f, z_q), d.arrow(q_f, z_iq), d.arrow(i_f, z_iq)
    forward = d.box(8.1, 6.1, f"h = MLP(z_iq) → FiLM(γ, β from h) → r → FiLM → t\n"
                            f"({heads.h[0].in_features} → {heads.h[0].out_features} → {heads.h[3].out_features} → "
                            f"classes)", "head", w=5.4, h=1.0)
    backward = d.box(2.8, 6.1, "t = MLP(z_q) → FiLM → r → FiLM → h\n(the relation's head and FiLM shared)", "head",
                     w=4.8, h=1.0)
    d.arrow(z_iq, forward), d.arrow(z_q, backward)
    triple = d.box(6.5, 7.8, "the chains' logits averaged → (h, r, t)\n"
                             "(training: the gold triple; test: the predicted)", "head", w=6.5, h=1.0)
    d.arrow(forward, triple), d.arrow(backward, triple)
    prompt = d.box(6.5, 9.4, '"question h r t." → text_encoder again', "text", w=6.0)
    d.arrow(triple, prompt)
    mixed = d.box(11, 11.0, "prompt_image: Linear([i_f; prompt]) → LN → ReLU", "fusion", w=5.2)
    d.arrow(prompt, mixed), d.arrow(i_f, mixed)
    answer = d.box(11, 12.5, "classifier → answer", "head")
    d.arrow(mixed, answer)
    d.note(3, 11.2, kb_note(MODELS["hilink_kb"]))
    d.fit("hilink: HK-TriNet+ and Link-Tuning (loss: answer + h + r + t)")
    return plots.save_png(d.fig, path, dpi=dpi)


def main_cli():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "figs"), help="directory for gel_vqa.png and hilink.png")
    p.add_argument("--dpi", type=int, default=130, help="resolution of the PNGs")
    args = p.parse_args()
    with rc_context(plots.style()):
        print("wrote", draw_gel_vqa(os.path.join(args.out, "gel_vqa.png"), args.dpi))
        print("wrote", draw_hilink(os.path.join(args.out, "hilink.png"), args.dpi))


if __name__ == "__main__":
    main_cli()
