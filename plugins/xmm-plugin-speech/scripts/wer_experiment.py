"""The LLM-as-recogniser experiment: train a speech recipe on espeak-ng speech, report WER on held-out espeak speech
(other sentences AND other speakers), on digit strings and on the LibriVox utterances of pocketsphinx-testdata.

    python plugins/xmm-plugin-speech/scripts/wer_experiment.py OUT_DIR [--recipe speech|speech-stack]
        [--train 3000 --digits 0 --test 100 --steps convert=1000,align=300 --seed 0]

Frozen Whisper-base (offline default) -> the recipe's bridge -> frozen SmolLM2-135M-Instruct, trained with the
recipe's own stages (the joint stage is left out: one modality). Training data: half grammar sentences, half
built-in prose (:func:`xmm_plugin_speech.synthetic.builtin_prose`), read by the 16 training speakers; the held-out
sets are read by the 9 others (:func:`~xmm_plugin_speech.synthetic.speaker_split`) and share no sentence with
training. Prints one JSON line: minutes per stage, the convert stage's own read-out WER (CIF bridges: the fired
vectors read through the LLM's embedding table, no LLM layer) and the LLM's WER per set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

SETS = ("test_grammar", "test_prose", "test_digits", "librivox")


def make_data(data: Path, n_train: int, n_test: int, seed: int, n_digits: int = 0) -> None:
    """Training split (training speakers) and the held-out sets (held-out speakers, unheard sentences); ``n_digits``
    digit strings (2-7 digits) are added to the training split."""
    from xmm_plugin_speech import synthetic as s

    params = {"train": n_train, "test": n_test, "seed": seed, "digits": n_digits}
    if (data / "train.jsonl").exists():
        made = json.loads((data / "params.json").read_text()) if (data / "params.json").exists() else None
        if made is not None and made != params:  # the sets on disk would silently answer for other settings
            raise SystemExit(f"{data} holds data made with {made}, not {params}: pick another OUT_DIR")
        return
    librivox = s.read_sphinx_transcription(s.LIBRIVOX_DIR / "transcription").values()
    # no prose chunk that overlaps a LibriVox transcript may be trained on
    prose = [c for c in s.builtin_prose() if not any(c in t or t in c for t in librivox)]
    rng = np.random.default_rng(seed)
    prose = [prose[i] for i in rng.permutation(len(prose))]
    test_prose, train_prose = prose[: n_test // 2], prose[n_test // 2 :]
    grammar = s.generate_sentences(4 * n_train, seed)
    test_grammar = [x for x in s.generate_sentences(4 * n_test, seed + 1000) if x not in set(grammar)][:n_test]
    train = [x for x in grammar if x not in set(test_grammar)][: n_train // 2] + train_prose[: n_train - n_train // 2]
    train += s.digit_strings(n_digits, seed + 3000, min_digits=2, max_digits=7)
    train = [train[i] for i in rng.permutation(len(train))]
    digits = [d for d in s.digit_strings(4 * n_test, seed + 2000, min_digits=3, max_digits=7) if d not in set(train)]
    train_speakers, test_speakers = s.speaker_split()
    s.make_speech_dataset(data, len(train), seed, "train", sentences=train, speakers=train_speakers)
    for i, (name, texts) in enumerate((("test_grammar", test_grammar), ("test_prose", test_prose),
                                       ("test_digits", digits[:n_test]))):
        s.make_speech_dataset(data, len(texts), seed + 1000 + i, name, sentences=texts, speakers=test_speakers)
    s.librivox_manifest(data)
    (data / "params.json").write_text(json.dumps(params) + "\n")


def plan_dict(recipe_name: str, steps: dict[str, int], seed: int) -> dict:
    from xmm_plugin_speech.recipes import RECIPES

    recipe = RECIPES[recipe_name].with_steps(steps) if steps else RECIPES[recipe_name]
    return {
        "model": {"llm": "smollm2", "system_prompt": "", "modalities": {"speech": recipe.modality_config()}},
        "output_dir": "runs/wer",
        "cache_dir": "cache",
        "log_every": 20,
        "report_to": "jsonl",
        "seed": seed,
        "stages": recipe.plan_stages({"train": ["data/train.jsonl"]}, joint=False),
    }


def read_out_wer(model, manifest: Path, cache: Path, metric: str) -> float:  # noqa: ANN001 - a MultimodalLM
    """WER of the convert stage alone: the fired vectors' nearest tokens through the embedding table."""
    from xmm.training.cache import CachedFeatureProvider, FeatureCache
    from xmm.training.data import BadSamples, read_manifest
    from xmm.training.evaluate import split_example
    from xmm.training.metrics import score
    from xmm.training.objectives_cif import read_out

    examples = read_manifest(manifest, model.specs, BadSamples("skip"))
    provider = CachedFeatureProvider(model, FeatureCache(cache), compute=model.encode_media)
    collator = model.collator(padding_side="right")
    preds, refs = [], []
    for start in range(0, len(examples), 32):
        chunk = examples[start : start + 32]
        items = list(collator([e.as_collator_input() for e in chunk]).media)
        preds += [model.tokenizer.decode(ids) for ids in read_out(model, items, provider(items), metric=metric)]
        refs += [split_example(e)[1] for e in chunk]
    return score("wer", preds, refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--recipe", default="speech", help="a recipe of the speech plugin: speech (CIF) or speech-stack")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--steps", default="", help="stage=steps overrides, e.g. convert=1000,align=300")
    ap.add_argument("--digits", type=int, default=0, help="digit strings added to the training split")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from xmm.model import MultimodalLM
    from xmm.training import evaluate, train

    out = args.out_dir.resolve()
    make_data(out / "data", args.train, args.test, args.seed, args.digits)
    steps = {k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(",") if kv)}
    (out / "plan.yaml").write_text(yaml.safe_dump(plan_dict(args.recipe, steps, args.seed), sort_keys=False))
    start = time.perf_counter()
    result = train(out / "plan.yaml")
    report: dict = {"recipe": args.recipe, "train_examples": args.train + args.digits,
                    "train_minutes": round((time.perf_counter() - start) / 60, 1)}
    minutes: dict[str, float] = {}
    for line in (result.output_dir / "logs" / "train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "stage" in rec and "window_s" in rec:
            minutes[rec["stage"]] = minutes.get(rec["stage"], 0.0) + rec["window_s"] / 60
    report["stage_minutes"] = {k: round(v, 1) for k, v in minutes.items()}
    model = MultimodalLM.from_pretrained(result.model_dir)
    from xmm_plugin_speech.recipes import RECIPES

    params = [s.objective_params.get("cif_tokens", {}) for s in RECIPES[args.recipe].stages]
    metric = next((p["metric"] for p in params if "metric" in p), "dot")
    for name in SETS:
        manifest = out / "data" / f"{name}.jsonl"
        if model.bridges["speech"].config.type == "cformer":
            report[f"readout_{name}"] = round(read_out_wer(model, manifest, out / "cache", metric), 3)
        r = evaluate(model, manifest, metric="wer", max_new_tokens=48, batch_size=16, feature_cache=out / "cache",
                     return_predictions=True)
        report[f"wer_{name}"] = round(r["score"], 3)
        report[f"examples_{name}"] = [(p["answer"], p["expected"]) for p in r["predictions"][:2]]
    print(json.dumps(report, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
