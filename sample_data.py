"""Synthetic sample data set: simple scenes of coloured shapes with Korean or English questions.

Type A questions are answered from the image alone (colour, shape, count, leftmost object).
Type B questions need a fact the image does not show, taken from the small knowledge base below
(a triple or an abstract text), applied to what the image shows. Every question names an object
only by a property that varies between images, so a question-only model cannot do well.

Written in the canonical format of this repo: <out>/data.csv and <out>/image/*.jpg, and the knowledge base as
<out>/triples.csv (h, r, t), for kge.py. Triple questions carry their triple as BOK-VQA does: the head is what the
image shows (a colour or shape), the relation what the question asks, the tail the fact.

Held-out facts (the default; held_out_facts=False gives the earlier sample, question for question): the knowledge
base also holds the gem of every colour, but train and valid questions ask only for the gems of red, blue and
green; test questions also ask for those of the HELD_OUT colours, facts no training question uses, whose answers
are no training answer. Such a sample has its split (by image, 8:1:1) in data.csv, since which questions an image
gets depends on its split.
"""
import math
import os
import random

import pandas as pd
from PIL import Image, ImageDraw

import util

IMAGE_SIZE = 128
JPEG_QUALITY = 90
MIN_RADIUS, MAX_RADIUS = 15, 26  # objects stay several pixels wide after the model's 4x stem at 64 px
MIN_OBJECTS, MAX_OBJECTS = 1, 4

COLOURS = {  # key: (rgb, ko, en)
    "red": ((215, 35, 35), "빨간색", "red"),
    "blue": ((35, 75, 215), "파란색", "blue"),
    "green": ((35, 160, 55), "초록색", "green"),
    "yellow": ((235, 205, 30), "노란색", "yellow"),
    "purple": ((135, 50, 175), "보라색", "purple"),
    "orange": ((245, 130, 20), "주황색", "orange"),
}
SHAPES = {  # key: (ko, en)
    "circle": ("원", "circle"),
    "square": ("사각형", "square"),
    "triangle": ("삼각형", "triangle"),
    "star": ("별", "star"),
}

# Knowledge base: facts about colours and shapes that no image shows.
FRUIT_OF_COLOUR = {  # colour -> (ko, en)
    "red": ("딸기", "strawberry"), "blue": ("블루베리", "blueberry"), "green": ("키위", "kiwi"),
    "yellow": ("바나나", "banana"), "purple": ("포도", "grape"), "orange": ("귤", "tangerine"),
}
VERTICES_OF_SHAPE = {"circle": "0", "square": "4", "triangle": "3", "star": "10"}
SYMBOL_OF_COLOUR = {  # colour -> (ko, en, abstract ko, abstract en)
    "red": ("열정", "passion", "빨간색은 불과 피의 색으로, 흔히 열정을 상징한다.",
            "Red is the colour of fire and blood and commonly symbolizes passion."),
    "blue": ("평온", "calm", "파란색은 하늘과 바다의 색으로, 흔히 평온을 상징한다.",
             "Blue is the colour of the sky and the sea and commonly symbolizes calm."),
    "green": ("자연", "nature", "초록색은 숲과 풀의 색으로, 흔히 자연을 상징한다.",
              "Green is the colour of forests and grass and commonly symbolizes nature."),
    "yellow": ("희망", "hope", "노란색은 햇빛의 색으로, 흔히 희망을 상징한다.",
               "Yellow is the colour of sunlight and commonly symbolizes hope."),
    "purple": ("고귀함", "nobility", "보라색은 옛날 귀한 염료의 색으로, 흔히 고귀함을 상징한다.",
               "Purple was the colour of a rare dye and commonly symbolizes nobility."),
    "orange": ("활력", "energy", "주황색은 노을과 불꽃의 색으로, 흔히 활력을 상징한다.",
               "Orange is the colour of sunsets and flames and commonly symbolizes energy."),
}
OBJECT_OF_SHAPE = {  # shape -> (ko, en, abstract ko, abstract en)
    "circle": ("바퀴", "wheel", "원은 꼭짓점이 없는 둥근 도형이며, 바퀴가 대표적인 원 모양의 물건이다.",
               "A circle is a round figure without vertices; a wheel is the typical circular object."),
    "square": ("창문", "window", "사각형은 네 변을 가진 도형이며, 창문이 대표적인 사각형 모양의 물건이다.",
               "A square has four sides; a window is the typical square object."),
    "triangle": ("피라미드", "pyramid", "삼각형은 세 변을 가진 도형이며, 피라미드는 옆에서 보면 삼각형 모양이다.",
                 "A triangle has three sides; a pyramid seen from the side is triangular."),
    "star": ("불가사리", "starfish", "별 모양은 다섯 개의 뾰족한 끝을 가지며, 불가사리가 대표적인 별 모양의 생물이다.",
             "A star shape has five points; a starfish is the typical star-shaped creature."),
}
GEM_OF_COLOUR = {  # colour -> (ko, en)
    "red": ("루비", "ruby"), "blue": ("사파이어", "sapphire"), "green": ("에메랄드", "emerald"),
    "yellow": ("토파즈", "topaz"), "purple": ("자수정", "amethyst"), "orange": ("호박", "amber"),
}
HELD_OUT = ("yellow", "purple", "orange")  # their gems: in the knowledge base, asked in test questions only
RELATION_NAMES = {"fruit": ("대표 과일", "typical fruit"), "vertices": ("꼭짓점 수", "number of vertices"),
                  "gem": ("대표 보석", "typical gem"), "colour_of_gem": ("보석의 색", "colour of the gem"),
                  "symbol": ("상징", "symbolizes"), "object": ("대표 물건", "typical object"),
                  # the inverse facts: every entity of the knowledge base then occurs in two triples
                  "colour_of_fruit": ("색", "colour"),
                  "shape_with_vertices": ("꼭짓점 수가 같은 도형", "shape with that many vertices"),
                  "colour_of_symbol": ("상징하는 색", "colour symbolizing it"), "shape_of_object": ("모양", "shape")}

QUESTION_TEMPLATES = {
    "ko": {
        "colour_of_shape": "{shape}의 색깔은?",
        "shape_of_colour": "{colour} 도형의 모양은?",
        "count": "도형은 몇 개?",
        "leftmost": "가장 왼쪽 도형의 색깔은?",
        "fruit_of_shape": "{shape}과 같은 색의 과일은?",
        "gem_of_shape": "{shape}과 같은 색의 보석은?",
        "vertices_of_colour": "{colour} 도형의 꼭짓점 수는?",
        "symbol_of_shape": "{shape}의 색이 상징하는 것은?",
        "object_of_colour": "{colour} 도형과 같은 모양의 물건은?",
    },
    "en": {
        "colour_of_shape": "What colour is the {shape}?",
        "shape_of_colour": "What shape is the {colour} one?",
        "count": "How many shapes are there?",
        "leftmost": "What colour is the leftmost shape?",
        "fruit_of_shape": "Which fruit has the colour of the {shape}?",
        "gem_of_shape": "Which gem has the colour of the {shape}?",
        "vertices_of_colour": "How many vertices does the {colour} shape have?",
        "symbol_of_shape": "What does the colour of the {shape} symbolize?",
        "object_of_colour": "Which object has the shape of the {colour} one?",
    },
}
TYPE_A = ["colour_of_shape", "shape_of_colour", "count", "leftmost"]
TYPE_B = ["fruit_of_shape", "vertices_of_colour", "symbol_of_shape", "object_of_colour"]
TYPE_B_WITH_GEMS = TYPE_B + ["gem_of_shape"]
VALID_FRACTION = TEST_FRACTION = 0.1


def _polygon(shape, cx, cy, r):
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    raise ValueError(shape)


def draw_scene(rng):
    """Returns (PIL image, objects) with 1-4 objects of distinct colours and distinct shapes."""
    background = tuple(rng.randint(200, 250) for _ in range(3))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    colours = rng.sample(sorted(COLOURS), n)
    shapes = rng.sample(sorted(SHAPES), n)
    objects = []
    for colour, shape in zip(colours, shapes):
        for _ in range(200):  # rejection sampling for non-overlapping objects with distinct x
            r = rng.randint(MIN_RADIUS, MAX_RADIUS)
            cx, cy = rng.randint(r + 2, IMAGE_SIZE - r - 3), rng.randint(r + 2, IMAGE_SIZE - r - 3)
            if all(math.hypot(cx - o["x"], cy - o["y"]) > r + o["r"] + 4 and abs(cx - o["x"]) > 6 for o in objects):
                break
        else:
            continue  # no room left: the scene gets fewer objects
        rgb = COLOURS[colour][0]
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        else:
            draw.polygon(_polygon(shape, cx, cy, r), fill=rgb)
        objects.append({"colour": colour, "shape": shape, "x": cx, "y": cy, "r": r})
    return image, objects


def make_question(family, objects, rng, lang):
    """Returns a row dict (question, answer, question_type, triple, abstract) for one question family."""
    k = 1 if lang == "ko" else 2
    li = 0 if lang == "ko" else 1
    obj = rng.choice(objects)
    shape_name, colour_name = SHAPES[obj["shape"]][li], COLOURS[obj["colour"]][k]
    question = QUESTION_TEMPLATES[lang][family].format(shape=shape_name, colour=colour_name)
    triple = abstract = ""
    if family == "colour_of_shape":
        answer = colour_name
    elif family == "shape_of_colour":
        answer = shape_name
    elif family == "count":
        answer = str(len(objects))
    elif family == "leftmost":
        answer = COLOURS[min(objects, key=lambda o: o["x"])["colour"]][k]
    elif family == "fruit_of_shape":
        answer = FRUIT_OF_COLOUR[obj["colour"]][li]
        triple = f"{colour_name}|{RELATION_NAMES['fruit'][li]}|{answer}"
    elif family == "gem_of_shape":
        answer = GEM_OF_COLOUR[obj["colour"]][li]
        triple = f"{colour_name}|{RELATION_NAMES['gem'][li]}|{answer}"
    elif family == "vertices_of_colour":
        answer = VERTICES_OF_SHAPE[obj["shape"]]
        triple = f"{shape_name}|{RELATION_NAMES['vertices'][li]}|{answer}"
    elif family == "symbol_of_shape":
        answer = SYMBOL_OF_COLOUR[obj["colour"]][li]
        abstract = SYMBOL_OF_COLOUR[obj["colour"]][2 + li]
    elif family == "object_of_colour":
        answer = OBJECT_OF_SHAPE[obj["shape"]][li]
        abstract = OBJECT_OF_SHAPE[obj["shape"]][2 + li]
    else:
        raise ValueError(family)
    return {"question": question, "answer": answer, "question_type": "A" if family in TYPE_A else "B",
            "triple": triple, "abstract": abstract}


def knowledge_base(lang, held_out_facts=True):
    """Every fact of the sample as (head, relation, tail): the triples its questions carry, the facts its abstract
    texts state, with held_out_facts the gem of every colour, and the inverse of each."""
    k, li = (1, 0) if lang == "ko" else (2, 1)
    names = {key: RELATION_NAMES[key][li] for key in RELATION_NAMES}
    facts = []
    for colour, fruit in FRUIT_OF_COLOUR.items():
        facts += [(COLOURS[colour][k], names["fruit"], fruit[li]),
                  (fruit[li], names["colour_of_fruit"], COLOURS[colour][k])]
    for shape, vertices in VERTICES_OF_SHAPE.items():
        facts += [(SHAPES[shape][li], names["vertices"], vertices),
                  (vertices, names["shape_with_vertices"], SHAPES[shape][li])]
    for colour, symbol in SYMBOL_OF_COLOUR.items():
        facts += [(COLOURS[colour][k], names["symbol"], symbol[li]),
                  (symbol[li], names["colour_of_symbol"], COLOURS[colour][k])]
    for shape, thing in OBJECT_OF_SHAPE.items():
        facts += [(SHAPES[shape][li], names["object"], thing[li]),
                  (thing[li], names["shape_of_object"], SHAPES[shape][li])]
    for colour, gem in GEM_OF_COLOUR.items() if held_out_facts else ():
        facts += [(COLOURS[colour][k], names["gem"], gem[li]), (gem[li], names["colour_of_gem"], COLOURS[colour][k])]
    return facts


def image_split(rng):
    """train, valid or test for one image (8:1:1)."""
    draw = rng.random()
    return "test" if draw < TEST_FRACTION else "valid" if draw < TEST_FRACTION + VALID_FRACTION else "train"


def gem_objects(objects, split):
    """The objects a gem question may ask about: never a HELD_OUT colour outside the test split; in a test image one
    of those where there is one, so that the held-out facts are asked."""
    held_out = [o for o in objects if o["colour"] in HELD_OUT]
    return (held_out or objects) if split == "test" else [o for o in objects if o["colour"] not in HELD_OUT]


def image_questions(objects, families, rng, lang, split=None):
    """The rows of one image's question families; a gem question without an object to ask about (split) becomes a
    question of a type B family the image has not got."""
    rows = []
    for family in families:
        candidates = gem_objects(objects, split) if family == "gem_of_shape" else objects
        if not candidates:
            family = rng.choice([f for f in TYPE_B if f not in families])
            candidates = objects
        rows.append(make_question(family, candidates, rng, lang))
    return rows


def generate(out_dir, n_images=3200, questions_per_image=4, lang="ko", seed=0, progress=True, force=False,
             held_out_facts=True):
    """Writes out_dir/data.csv, out_dir/image/ and out_dir/triples.csv (the knowledge base, for kge.py); returns the
    number of rows. held_out_facts: the gem questions and facts, and the split in data.csv (the module's docstring).
    A file there that this repo did not write is never replaced, unless force (util.OutputFolder)."""
    from tqdm import tqdm

    names = [f"image/scene_{i:05d}.jpg" for i in range(n_images)]
    outputs = util.OutputFolder(out_dir, force).check(["data.csv", "triples.csv"] + names)
    rng = random.Random(seed)
    split_rng = random.Random(f"split {seed}")  # its own stream: the other draws stay those of the earlier sample
    os.makedirs(os.path.join(out_dir, "image"), exist_ok=True)
    rows = []
    for i, name in enumerate(tqdm(names, desc="sample images", disable=not progress)):
        image, objects = draw_scene(rng)
        image.save(os.path.join(out_dir, name), quality=JPEG_QUALITY)
        # Half the questions type A, half type B (alternating by image when the count is odd); distinct per image.
        n_a = (questions_per_image + i % 2) // 2
        families = rng.sample(TYPE_A, n_a) + rng.sample(TYPE_B_WITH_GEMS if held_out_facts else TYPE_B,
                                                         questions_per_image - n_a)
        split = image_split(split_rng) if held_out_facts else None
        for row in image_questions(objects, families, rng, lang, split):
            rows.append({"image": os.path.basename(name), **row, "lang": lang, **({"split": split} if split else {})})
    outputs.record(names)
    columns = ["image", "question", "answer", "question_type", "triple", "abstract", "lang"]
    outputs.write("data.csv",
                  util.csv_bytes(pd.DataFrame(rows, columns=columns + (["split"] if held_out_facts else []))))
    triples = pd.DataFrame(knowledge_base(lang, held_out_facts), columns=["h", "r", "t"])
    outputs.write("triples.csv", util.csv_bytes(triples))
    return len(rows)
