"""The models by name: `python main.py --model NAME`. Each is a typed config (a dataclass, checked when made) of one
family's network; a run saves it in its config.json, and every script builds the model from it.

    baseline       the original VQA_NIA model (model.py)
    gel_vqa        GEL-VQA as published (gel.py)
    hilink         HiLINK as published (hilink.py)
    hilink_kb      this repo's own: HiLINK reading a knowledge base at run time (hilink.py)
    oracle_triple  the gold triple's KG embeddings, an upper bound (oracles.py)
    oracle_text    the gold knowledge as words, an upper bound (oracles.py)

A config file (--config FILE.yaml) changes a model's settings for an ablation; see configs/.
"""
import dataclasses
import os
import shlex

import torch
import yaml
from transformers import AutoConfig, AutoModel, AutoTokenizer

import checkpoints
import knowledge
import util
from encoders import build_image_encoder, build_text_encoder, image_model_spec
from gel import GELVQA, GELVQAConfig
from hilink import HiLINK, HiLINKConfig
from kb import read_kb
from model import ConfigError, ModelConfig, VQAModel
from oracles import OracleText, OracleTextConfig, OracleTriple, OracleTripleConfig

# Measured at seed 42, --preset sample (docs/results.md): the product fusion and independent heads are the one setting
# that answers the sample's held-out facts (80.4%; HiLINK's concat and cascade 15.2%) and still beats hilink on the
# BOK proxy (65.4 against 63.7).
HILINK_KB = HiLINKConfig(name="hilink_kb", fusion="mul", triple_head="independent", kb_constrained=True,
                         answer_from_kb=True, head_logit_adjustment=True, head_from_answers=True)
MODELS = {config.name: config for config in [ModelConfig(), GELVQAConfig(), HiLINKConfig(), HILINK_KB,
                                              OracleTripleConfig(), OracleTextConfig()]}
NETWORKS = {ModelConfig: VQAModel, GELVQAConfig: GELVQA, HiLINKConfig: HiLINK, OracleTripleConfig: OracleTriple,
            OracleTextConfig: OracleText}
# what each network is built from besides the encoders and the answer head's options
NETWORK_INPUTS = {GELVQA: ["knowledge_sizes", "kge_widths"], HiLINK: ["knowledge_sizes", "pretrained"],
                  OracleTriple: ["kge_widths"]}
HEAD_OPTIONS = ["dim_h", "dropout", "use_transformer_layer", "n_transformer_layers", "n_heads", "text_pool"]


def named(name, settings=None, source="--config"):
    """The registered model name with the given settings changed (ConfigError for one it does not have)."""
    if name not in MODELS:
        raise ConfigError(f"{source}: no model named {name!r}; the models are {', '.join(MODELS)}.")
    base = MODELS[name]
    unknown = sorted(set(settings or {}) - set(base.settings()))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in base.settings().items())
        raise ConfigError(f"{source}: {name} has no setting {', '.join(unknown)}. Its settings are: {known}.")
    return dataclasses.replace(base, **(settings or {}))


def read_config_file(path):
    """A YAML config file as a dict (a mapping of settings and options to values), ConfigError where it is none."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot be read ({e.strerror or e}).") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"--config {path}: not valid YAML{where} ({getattr(e, 'problem', None) or e}).") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ConfigError(f"--config {path}: a config file is a mapping of settings to values (key: value lines).")
    return values


# ---------------------------------------------------------------- runs of earlier versions

class RetiredError(util.CheckpointError):
    """A run that used a part this repo no longer has."""


RETIRED_BY = "ad65904"  # the last commit that loads runs with the retired parts below, or resumes earlier runs
# the options of runs trained before models had names, and their values where a run lacks them
EARLIER_OPTIONS = {"knowledge": "none", "knowledge_fusion": "mul", "triple_head": "independent",
                   "triple_encoder": "shared", "kb_constrained": False, "kb_score": "pair", "triple_noise": 0.0,
                   "knowledge_dropout": 0.0, "knowledge_free_loss": False, "knowledge_head": "shared",
                   "head_lr": None, "head_logit_adjustment": False, "head_from_answers": False, "answer_from_kb": False,
                   "answer_relation": False, "ablate": "none"}


def retired_parts(option):
    """The retired parts an earlier run's options (option: key -> value) used."""
    gel_extras = option("triple_head") != "independent" or option("triple_encoder") != "shared" or \
        option("kb_constrained") or option("answer_from_kb") or option("head_logit_adjustment") or \
        option("head_from_answers") or option("triple_noise")
    parts = [("--knowledge_dropout", option("knowledge_dropout")),
             (f"--knowledge_head {option('knowledge_head')}", option("knowledge_head") != "shared"),
             ("--answer_relation", option("answer_relation")), ("--kb_score product", option("kb_score") == "product"),
             ("--head_lr", option("head_lr") is not None),
             ("--knowledge_fusion film", option("knowledge_fusion") == "film"),
             ("--knowledge gel_text (the predicted triple as words through the answer path's features; hilink "
              "replaces it)", option("knowledge") == "gel_text"),
             ("--knowledge gel with --triple_head, --triple_encoder, --kb_constrained, --answer_from_kb, "
              "--head_logit_adjustment, --head_from_answers or --triple_noise", option("knowledge") == "gel"
              and gel_extras)]
    return [part for part, used in parts if used]


def from_options(config, run_dir):
    """The registered model that an earlier run's options describe (a run trained before models had names);
    RetiredError where it used a part this repo no longer has."""
    def option(key):
        return config.get(key, EARLIER_OPTIONS[key])

    retired = retired_parts(option)
    if retired:
        raise RetiredError(f"{run_dir} was trained with {' and '.join(retired)}, retired from this repo "
                           f"(docs/results.md says what measured it); commit {RETIRED_BY} is the last that loads it: "
                           f"`git checkout {RETIRED_BY}`.")
    ablate, knowledge_mode = option("ablate"), option("knowledge")
    if knowledge_mode == "gel":
        return GELVQAConfig(ablate=ablate, fusion=option("knowledge_fusion"), augment=False)
    if knowledge_mode == "ideal":
        return OracleTripleConfig(ablate=ablate, fusion=option("knowledge_fusion"),
                                  answer_from_kb=option("answer_from_kb"),
                                  knowledge_free_loss=option("knowledge_free_loss"))
    if knowledge_mode == "text":
        return OracleTextConfig(ablate=ablate, answer_from_kb=option("answer_from_kb"),
                                knowledge_free_loss=option("knowledge_free_loss"))
    return ModelConfig(ablate=ablate)


def run_model(config, run_dir="the run"):
    """A run's model config from its config.json (a run of an earlier version: from its options)."""
    if "model" not in config:
        return from_options(config, run_dir)
    saved = dict(config["model"])
    name = saved.pop("name", None)
    if name not in MODELS:
        raise util.CheckpointError(f"{run_dir}/{util.CONFIG_FILE}: its model {name!r} is not registered here (the "
                                   f"models are {', '.join(MODELS)}); restore the file from a copy of the run.")
    return named(name, saved, f"{run_dir}/{util.CONFIG_FILE}")


# ---------------------------------------------------------------- building and loading

def run_config(options, model_config, num_answers, world_size=1):
    """A run's config.json: the options it saves (util.RUN_OPTIONS), its model, and what the model is rebuilt from
    without its sources (the image encoder's timm architecture and arguments, the number of answers)."""
    config = {k: getattr(options, k) for k in util.RUN_OPTIONS}
    image_arch, image_kwargs = image_model_spec(options.image_model, options.image_model_kwargs)
    config.update(model=model_config.to_json(), num_answers=num_answers, image_arch=image_arch,
                  image_model_kwargs=image_kwargs, world_size=world_size)
    if getattr(options, "argv", None) is not None:  # the command that started the run, as given
        config["command"] = shlex.join(["python", "main.py", *map(str, options.argv)])
    return config


def build_model(config, text_config=None, from_sources=False):
    """The model a run's config describes; the one way a model is built (training, inference, bench, figures).

    from_sources: the encoders come from config's text_model and image_model (hub or local directory), pretrained
    if config says so; a text_config (a scratch encoder's) replaces the text model. Otherwise every weight is
    random, ready for checkpoints.load_weights, and nothing is read or downloaded: the text encoder from text_config
    (a run's text_encoder/ config), the image encoder from its timm architecture."""
    model_config = run_model(config)
    pretrained = from_sources and config["pretrained"]
    text_encoder = AutoModel.from_config(text_config) if text_config is not None else \
        build_text_encoder(config["text_model"], pretrained=pretrained)
    image_encoder = build_image_encoder(config["image_model"] if from_sources else config["image_arch"],
                                        pretrained=pretrained, **config["image_model_kwargs"])
    network = NETWORKS[type(model_config)]
    inputs = {k: tuple(config[k]) if isinstance(config[k], list) else config[k]
              for k in NETWORK_INPUTS.get(network, [])}
    return network(text_encoder, image_encoder, config["num_answers"], config["img_size"], model_config,
                   **{k: config[k] for k in HEAD_OPTIONS}, **inputs)


# what inference reads from a run's config.json
RUN_CONFIG_KEYS = ["num_answers", "image_arch", "image_model_kwargs", "img_size", "max_token", "data_dir",
                   "train_data"] + HEAD_OPTIONS


def load_run(model_path=None, device="cpu", results_dir="results", kb=None):
    """(model, tokenizer, config, answers, run_dir) from a run directory or its weights; no training data needed.
    kb: a knowledge base CSV (h, r, t) to use instead of the one the run was trained with (--kb)."""
    run_dir, weights = checkpoints.find_run(model_path, results_dir)
    for name in (util.CONFIG_FILE, util.ANSWERS_FILE, util.TOKENIZER_DIR, util.TEXT_CONFIG_DIR):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"{run_dir} has no {name}: weights are used from the run directory main.py "
                                    f"wrote them to, with its config.json, answers.json, tokenizer/ and text_encoder/.")
    config = util.read_json(os.path.join(run_dir, util.CONFIG_FILE), required=RUN_CONFIG_KEYS)
    answers = util.read_json(os.path.join(run_dir, util.ANSWERS_FILE))
    if not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
        raise util.CheckpointError(f"{os.path.join(run_dir, util.ANSWERS_FILE)} is not a list of answers; restore it "
                                   f"from a copy of the run.")
    if len(answers) != config["num_answers"]:
        raise ValueError(f"{run_dir}: answers.json has {len(answers)} answers but config.json says "
                         f"{config['num_answers']}; the run directory is inconsistent.")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(run_dir, util.TOKENIZER_DIR))
    model = build_model(config, AutoConfig.from_pretrained(os.path.join(run_dir, util.TEXT_CONFIG_DIR)))
    checkpoints.load_weights(model, weights, config, answers)
    attach_run_knowledge(model, run_dir, config, tokenizer, kb)
    return model.to(device, memory_format=torch.channels_last).eval(), tokenizer, config, answers, run_dir


def attach_run_knowledge(model, run_dir, config, tokenizer, kb_path=None):
    """Gives a knowledge run's model what its weights do not hold (knowledge.attach), from the run's files; kb_path: a
    knowledge base to use instead of the run's own (--kb)."""
    vocab, kb, embeddings = knowledge.load_run_knowledge(run_dir, model.config)
    if kb_path is not None:
        if not model.config.uses_kb():
            raise util.UsageError(f"--kb {kb_path}: {run_dir}'s model, {model.config.name}, reads no knowledge base.")
        kb = read_kb(kb_path)
        knowledge.shared_names(kb, vocab, f"--kb {kb_path}", print)
    elif kb is not None:
        knowledge.say_edited_kb(kb, os.path.join(config["data_dir"], "triples.csv"), run_dir)
    if vocab is not None:
        knowledge.attach(model, vocab, tokenizer, config["max_token"], kb, embeddings)
