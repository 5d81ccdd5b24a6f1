"""Architecture diagrams of model.VQAModel: base_model.png (element-wise product fusion) and TE_model.png (with
--use_transformer_layer's Transformer encoder after the fusion).

    python figs/draw_model.py             # writes figs/base_model.png and figs/TE_model.png
    python figs/draw_model.py --out /tmp  # somewhere else

The model is built on PyTorch's meta device (shapes only: no memory, no weights, no download) with main.py's default
options (xlm-roberta-base, resnet50, dim_h 1024, ...). Every module name and size drawn is read from that instance,
so the pictures follow model.py and main.py: a renamed module stops this script instead of drawing a stale picture.
"""
import argparse
import os
import sys
from collections import namedtuple

import torch
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # model, main and plots live in the repository root

import main  # noqa: E402
import plots  # noqa: E402
from encoders import xlmr_base_config  # noqa: E402
from models import build_model, run_config  # noqa: E402

COLORS = {"input": "#fdebd0", "text": "#d6e6f5", "image": "#dcefd9", "fusion": "#f1d9ec", "head": "#ececec"}
Box = namedtuple("Box", "x y w h")


def build(args, use_transformer_layer):
    """VQAModel with main.py's defaults, on the meta device; one answer (the classifier's width is drawn as
    #answers)."""
    if args.text_model != "xlm-roberta-base":
        sys.exit(f"error: main.py's default --text_model is now {args.text_model}; "
                 f"draw it from its config in {__file__}")
    args.use_transformer_layer = use_transformer_layer
    with torch.device("meta"):
        model = build_model(run_config(args, args.model_config, 1), xlmr_base_config())
        fmap = model.image_encoder(torch.zeros(1, 3, args.img_size, args.img_size)).shape[1:]
    return model, tuple(fmap)


class Diagram:
    """Boxes with centred text and arrows between them; y grows downwards from 0 and the page fits at save time."""

    def __init__(self, width=12, scale=0.78):
        self.fig = Figure()
        self.ax = self.fig.add_axes([0, 0, 1, 1])
        self.ax.set_axis_off()
        self.width, self.scale, self.bottom = width, scale, 0.0

    def box(self, x, y, text, kind, w=4.2, h=0.85, size=9):
        self.ax.add_patch(FancyBboxPatch((x - w / 2, -y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.12",
                                         fc=COLORS[kind], ec="0.35", lw=1))
        self.ax.text(x, -y, text, ha="center", va="center", fontsize=size, linespacing=1.35)
        self.bottom = max(self.bottom, y + h / 2)
        return Box(x, y, w, h)

    def arrow(self, a, b, label=None):
        """From the bottom of box a to the top of box b, with an optional label (a tensor and its size)."""
        start, end = (a.x, -a.y - a.h / 2), (b.x, -b.y + b.h / 2)
        self.ax.annotate("", xy=end, xytext=start,
                         arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.1, shrinkA=0, shrinkB=0))
        if label:
            self.ax.text((start[0] + end[0]) / 2 + 0.12, (start[1] + end[1]) / 2, label, fontsize=8, color="0.2",
                         va="center", style="italic")

    def note(self, x, y, text):
        self.ax.text(x, -y, text, ha="center", va="center", fontsize=8, color="0.2")

    def fit(self, title):
        """Title on top, page height to the lowest box."""
        height = self.bottom + 0.6
        self.ax.text(self.width / 2, 0.0, title, ha="center", va="center", fontsize=12, weight="bold")
        self.ax.set(xlim=(0, self.width), ylim=(-height, 0.5))
        self.fig.set_size_inches(self.width * self.scale, (height + 0.5) * self.scale)


def draw(model, fmap, args, path):
    m = dict(model.named_children())  # KeyError here means model.py renamed a module: update the picture
    text, image, proj, drop = m["text_encoder"], m["image_encoder"], m["image_proj"], m["drop"]
    linear, norm, classifier = m["linear"], m["h_layer_norm"], m["classifier"]
    te = m.get("fusion_encoder")
    tc = text.config
    channels, grid_h, grid_w = fmap
    head_params = sum(p.numel() for p in classifier.parameters())  # one answer's row: weight and bias
    params = sum(p.numel() for p in model.parameters()) - head_params
    dim = proj.out_features

    d = Diagram()
    y = 1.4
    question = d.box(3, y, "question\n\"이미지 속 원은 무슨 색이야?\"", "input")
    img = d.box(9, y, f"image\n3 × {args.img_size} × {args.img_size}", "input")
    y += 1.5
    t_enc = d.box(3, y, f"text_encoder: {type(text).__name__}\n{tc.num_hidden_layers} layers, hidden {tc.hidden_size}, "
                        f"{tc.num_attention_heads} heads", "text", h=1.0)
    i_enc = d.box(9, y, f"image_encoder: {type(image).__name__} ({args.image_model})\n"
                        f"feature map {channels} × {grid_h} × {grid_w}", "image", h=1.0)
    d.arrow(question, t_enc, f"tokens (≤ {args.max_token})")
    d.arrow(img, i_enc)
    y += 1.5
    if model.text_pool == "mean":
        pool = d.box(3, y, "masked mean over tokens", "text")
    else:
        pooler = text.pooler.dense
        pool = d.box(3, y, f"pooler: Linear({pooler.in_features} → {pooler.out_features})\non <s>, without tanh",
                     "text")
    d.arrow(t_enc, pool, "last_hidden_state")
    i_pool = d.box(9, y, f"mean over {grid_h} × {grid_w}", "image")
    d.arrow(i_enc, i_pool)
    y += 1.4
    i_proj = d.box(9, y, f"image_proj: Linear({proj.in_features} → {proj.out_features})\n"
                         f"drop: Dropout({drop.p:g})", "image", h=1.0)
    d.arrow(i_pool, i_proj, f"[{proj.in_features}]")
    y += 1.6
    fused = d.box(6, y, "⊙ element-wise product\nfused = i_f * q_f", "fusion", h=1.0)
    d.arrow(pool, fused, f"q_f [{dim}]")
    d.arrow(i_proj, fused, f"i_f [{dim}]")
    last = fused
    if te is not None:
        layer, type_embed = te.layers[0], m["type_embed"]
        y += 1.9
        # the token sequence in model.forward's order; the first output replaces fused
        names = ["fused", "i_f\n(image)", "q_f\n(question)",
                 f"image grid: {model.image_pos.shape[1]}\n(image_proj per cell\n+ image_pos)",
                 f"question tokens\n(≤ {args.max_token},\nlast_hidden_state)"]
        tokens = [d.box(1.3 + 2.35 * i, y, name, "fusion", w=2.15, h=1.15, size=8) for i, name in enumerate(names)]
        d.arrow(fused, tokens[0])
        d.note(6, y + 0.85, f"tokens, each + type_embed: Embedding({type_embed.num_embeddings}, "
                            f"{type_embed.embedding_dim}), padding of the question masked")
        y += 2.3
        encoder = d.box(6, y, f"fusion_encoder: {type(te).__name__}, {te.num_layers} × {type(layer).__name__}\n"
                              f"{layer.self_attn.num_heads} heads, d {layer.self_attn.embed_dim}, "
                              f"FFN {layer.linear1.out_features}, {'pre' if layer.norm_first else 'post'}-norm",
                        "fusion", w=9.0, h=1.0)
        for token in tokens:
            d.arrow(token, encoder)
        y += 1.5
        first = d.box(6, y, "first output (at the fused token)", "fusion")
        d.arrow(encoder, first, f"[{dim}]")
        last = first
    steps = [f"linear: Linear({linear.in_features} → {linear.out_features})",
             f"h_layer_norm: LayerNorm({norm.normalized_shape[0]})", "ReLU", f"drop: Dropout({drop.p:g})",
             f"classifier: Linear({classifier.in_features} → #answers)"]
    for i, step in enumerate(steps):
        y += 1.4 if i == 0 else 1.0
        b = d.box(6, y, step, "head", h=0.65)
        d.arrow(last, b, f"[{dim}]" if i == 0 else None)
        last = b
    y += 1.2
    d.arrow(last, d.box(6, y, "answer: softmax → top-k", "input", h=0.7), "logits")
    d.fit(f"VQAModel{' + Transformer encoder' if te is not None else ''}: "
          f"{params / 1e6:.1f}M parameters + {head_params:,} per answer")
    return plots.save_png(d.fig, path, dpi=args.dpi)


def main_cli():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "figs"), help="directory for base_model.png and TE_model.png")
    p.add_argument("--dpi", type=int, default=130, help="resolution of the PNGs")
    args = p.parse_args()
    model_args = main.parse_args([])  # main.py's defaults: the model a plain `python main.py` trains
    model_args.dpi = args.dpi
    with rc_context(plots.style()):
        for name, use_te in [("base_model.png", False), ("TE_model.png", True)]:
            model, fmap = build(model_args, use_te)
            print("wrote", draw(model, fmap, model_args, os.path.join(args.out, name)))


if __name__ == "__main__":
    main_cli()
