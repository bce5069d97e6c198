"""``xmm init plan``: a training plan for your data from the recipe the modality's plugin ships, sized to this machine.

:func:`init_plan` takes the plugin's :class:`~xmm.recipes.Recipe` (encoder, bridge, stages with objectives, batch
sizes, learning rates and step counts), points its stages at your manifests, caps batch sizes at the examples there
are, optionally mixes in general instruction data made by the frozen LLM itself (:mod:`xmm.training.general_data`),
then times a few steps of every stage on this machine (:mod:`xmm.training.sizing`): objectives that give no loss with
the chosen bridge are left out, and with a time budget the step counts are scaled down to fit it (never up). The plan
is written as YAML with a header saying what was measured and chosen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xmm.errors import ConfigError
from xmm.recipes import Recipe

log = logging.getLogger(__name__)

GENERAL_FILE = "general.jsonl"
MAX_GENERAL_UNIQUE = 240  # answers generated before training; more copies of them reach larger shares


@dataclass
class InitReport:
    """What :func:`init_plan` did: the plan written, the recipe's steps and the chosen ones, the measured timing,
    the estimated minutes, the general data and notes for the user."""

    path: Path
    plan: dict[str, Any]
    recipe: Recipe
    recipe_steps: dict[str, int]
    steps: dict[str, int]
    timing: Any = None
    factor: float = 1.0
    estimate_s: float | None = None
    general: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def find_recipe(modality: str, name: str | None = None, *, registry: Any = None) -> Recipe:
    """The recipe ``name``, else the one registered under the modality's name, else the only one for it."""
    from xmm.registry import get_registry

    reg = registry or get_registry()
    if modality not in reg.modalities:
        raise ConfigError(f"no modality '{modality}' is installed; installed: {sorted(reg.modalities) or 'none'} "
                          "(`xmm plugins` lists them)", field="--modality")
    if name is not None:
        recipe = reg.recipe(name)
    else:
        mine = {n: r for n, r in reg.recipes.items() if r.modality == modality}
        if not mine:
            raise ConfigError(f"the {modality} plugin ships no recipe (xmm_recipes hook); write a plan by hand "
                              "(examples/plans/)", field="--modality")
        if modality in mine:
            recipe = mine[modality]
        elif len(mine) == 1:
            recipe = next(iter(mine.values()))
        else:
            raise ConfigError(f"several recipes train {modality}: {sorted(mine)}; choose one with --recipe",
                              field="--recipe")
    if recipe.modality != modality:
        raise ConfigError(f"recipe '{name}' trains {recipe.modality}, not {modality}", field="--recipe")
    return recipe


def count_examples(paths: Sequence[Path], registry: Any = None) -> int:
    """Records in the manifests (any format :mod:`xmm.data` reads; bad records count too, training skips them)."""
    from xmm.data import open_dataset
    from xmm.registry import get_registry

    specs = (registry or get_registry()).modalities
    return sum(len(open_dataset(p, specs)) for p in paths)


def _rel(path: Path, folder: Path) -> str:
    return os.path.relpath(path.resolve(), folder.resolve())


def build_plan(recipe: Recipe, *, plan_path: Path, data: Sequence[Path], captions: Sequence[Path] = (),
               eval_manifest: Path | None = None, metric: str = "exact", llm: str = "smollm2",
               general: Path | None = None, examples: int | None = None, run_dir: str | None = None) -> dict[str, Any]:
    """The plan dict of ``recipe`` over the manifests (paths written relative to ``plan_path``'s folder).

    The joint stage (X-LLM's integrate, which mixes modalities) is left out of a one-modality plan. ``general``: a
    manifest added to every stage trained with the ``lm`` objective. ``examples``: the training examples there are;
    a batch larger than that is cut to it."""
    folder = plan_path.parent
    roles = {"train": [_rel(p, folder) for p in data], "captions": [_rel(p, folder) for p in captions]}
    stages = recipe.plan_stages(roles, joint=False)
    for stage in stages:
        if general is not None and "lm" in (stage["objectives"] if isinstance(stage["objectives"], list)
                                            else list(stage["objectives"])):
            stage["data"]["train"].append(_rel(general, folder))
        if examples is not None and stage["batch_size"] > examples:
            stage["batch_size"] = max(1, examples)
    if eval_manifest is not None:
        stages[-1]["eval"] = {"manifest": _rel(eval_manifest, folder), "metric": metric, "limit": 200,
                              "max_new_tokens": 16}
    name = plan_path.stem
    return {
        "model": {"llm": llm, "system_prompt": "", "modalities": {recipe.modality: recipe.modality_config()}},
        "output_dir": run_dir or f"runs/{name}",
        "cache_dir": "runs/features",
        "seed": 0,
        "on_bad_sample": "skip",
        "log_every": 10,
        "checkpoint_every": 100,
        "report_to": "auto",
        "stages": stages,
    }


def _set_steps(plan: dict[str, Any], recipe: Recipe, steps: dict[str, int]) -> None:
    """Write ``steps`` (and the matching warm-up) into the plan's stages, from the recipe's own rule."""
    sized = recipe.with_steps(steps)
    for stage in plan["stages"]:
        rs = sized.stage(stage["name"])
        stage["max_steps"] = rs.steps
        stage["schedule"]["warmup_steps"] = rs.warmup_steps


def _drop_inapplicable(plan: dict[str, Any], timing: Any, notes: list[str]) -> None:
    """Leave out the objectives that gave no loss when timed, and stages none of whose objectives did."""
    kept = []
    for stage in plan["stages"]:
        t = timing.stages.get(stage["name"])
        if t is None:
            kept.append(stage)
            continue
        objectives = stage["objectives"]
        names = list(objectives) if isinstance(objectives, (list, dict)) else [objectives]
        applied = [n for n in names if n in t.objectives]
        if not applied:
            notes.append(f"stage '{stage['name']}' left out: none of its objectives ({', '.join(names)}) applies to "
                         "this model's bridge")
            continue
        if len(applied) < len(names):
            notes.append(f"stage '{stage['name']}': objectives {sorted(set(names) - set(applied))} left out (they do "
                         "not apply to this model's bridge)")
            stage["objectives"] = applied if isinstance(objectives, list) else {n: objectives[n] for n in applied}
        kept.append(stage)
    if not kept:
        raise ConfigError("no stage of the recipe can train this model (see the notes above)", field="--bridge")
    plan["stages"] = kept


def init_plan(
    modality: str,
    data: Sequence[str | os.PathLike[str]],
    *,
    output: str | os.PathLike[str] = "plan.yaml",
    minutes: float | None = None,
    llm: str = "smollm2",
    recipe_name: str | None = None,
    bridge: str | None = None,
    captions: Sequence[str | os.PathLike[str]] = (),
    eval_manifest: str | os.PathLike[str] | None = None,
    metric: str = "exact",
    mix_general: float = 0.0,
    measure: bool = True,
    time_steps: int = 3,
    force: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> InitReport:
    """Write a plan for ``modality`` over ``data`` to ``output`` (see the module docstring); ``say`` receives what the
    user should read (measurements, choices, next commands)."""
    from xmm.training.plan import load_plan

    out = Path(output)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; choose another --output or pass --force", field="--output")
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"must be > 0, got {minutes}", field="--minutes")
    if not 0 <= mix_general < 1:
        raise ConfigError(f"a share of the training examples, 0 <= x < 1; got {mix_general}", field="--mix-general")
    paths = [Path(p) for p in data]
    for p in [*paths, *map(Path, captions), *([Path(eval_manifest)] if eval_manifest else [])]:
        if not p.exists():
            raise ConfigError(f"{p}: no such file or folder", field="--data")
    recipe = find_recipe(modality, recipe_name)
    if bridge is not None:
        recipe = recipe.model_copy(update={"bridge": {"type": bridge}})
    n = count_examples(paths)
    if n == 0:
        raise ConfigError(f"{', '.join(map(str, paths))}: no examples", field="--data")
    say(f"recipe '{recipe_name or recipe.modality}' for {modality}: {recipe.description or '(no description)'}")
    say(f"data: {n} training examples in {', '.join(map(str, paths))}")
    notes: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = build_plan(recipe, plan_path=out, data=paths, captions=[Path(c) for c in captions],
                      eval_manifest=Path(eval_manifest) if eval_manifest else None, metric=metric, llm=llm,
                      examples=n)
    capped = [s["name"] for s in plan["stages"] if s["batch_size"] < recipe.stage(s["name"]).batch_size]
    if capped:
        notes.append(f"batch size of {', '.join(capped)} cut to the {n} examples there are")
    model = None
    general_info = None
    if mix_general > 0:
        model = _model_for(plan, out)
        general_info = _make_general(model, paths[0], mix_general, n, progress, say)
    if general_info is not None:
        plan = build_plan(recipe, plan_path=out, data=paths, captions=[Path(c) for c in captions],
                          eval_manifest=Path(eval_manifest) if eval_manifest else None, metric=metric, llm=llm,
                          general=Path(general_info["path"]), examples=n)
    recipe_steps = {s.name: s.steps for s in recipe.own_stages}
    steps = dict(recipe_steps)
    timing, factor, estimate = None, 1.0, None
    if measure:
        from xmm.training.sizing import describe_timing, fit_steps, time_stages

        say(f"timing {time_steps} steps of each stage on this machine (after one warm-up step)...")
        _set_steps(plan, recipe, {k: max(v, time_steps + 1) for k, v in steps.items()})
        timing = time_stages(load_plan(plan, base_dir=out.parent.resolve()), steps=time_steps, model=model,
                             progress=progress)
        say("measured:\n" + describe_timing(timing))
        _drop_inapplicable(plan, timing, notes)
        steps = {s["name"]: recipe_steps[s["name"]] for s in plan["stages"]}
        if minutes is not None:
            try:
                steps, factor = fit_steps(steps, timing, minutes * 60)
            except ValueError as e:
                raise ConfigError(f"{e}, more than --minutes {minutes:g}: give it more time or fewer examples",
                                  field="--minutes") from None
        estimate = timing.training_seconds(steps) + timing.encode_seconds(steps)
    _set_steps(plan, recipe, steps)
    chosen = ", ".join(f"{k} {v}" for k, v in steps.items())
    if timing is None:
        say(f"steps: {chosen} (the recipe's; not measured, --no-measure)")
    elif factor < 1:
        say(f"steps: {chosen} (the recipe's {', '.join(f'{k} {recipe_steps[k]}' for k in steps)} scaled by "
            f"{factor:.2f} to fit {minutes:g} min); estimated {estimate / 60:.1f} min")
    else:
        fits = f", within {minutes:g} min" if minutes is not None else ""
        say(f"steps: {chosen} (the recipe's){fits}; estimated {estimate / 60:.1f} min on this machine")
    if general_info is None and mix_general == 0:
        notes.append("trained on one kind of question only, a bridge tends to answer it to every prompt; "
                     "--mix-general 0.2 mixes in general instructions the LLM answers itself (xmm eval's off-task "
                     "probe measures it)")
    for note in notes:
        say(f"note: {note}")
    _write(out, plan, recipe, timing, steps, estimate, general_info)
    say(f"wrote {out}; next: xmm cache build {out} && xmm train {out}")
    return InitReport(out, plan, recipe, recipe_steps, steps, timing, factor, estimate, general_info, notes)


def _model_for(plan: dict[str, Any], out: Path) -> Any:
    from xmm.training.context import build_model
    from xmm.training.plan import load_plan

    return build_model(load_plan(plan, base_dir=out.parent.resolve()))


def _make_general(model: Any, manifest: Path, fraction: float, n: int, progress: bool,
                  say: Callable[[str], None]) -> dict[str, Any] | None:
    """Self-distilled general examples beside ``manifest`` (so its media paths stay valid there)."""
    from xmm.training.general_data import (
        distil_answers,
        general_count,
        general_prompts,
        media_parts,
        write_general_manifest,
    )

    unique, copies = general_count(fraction, n, max_unique=MAX_GENERAL_UNIQUE)
    say(f"general data: {unique} instruction prompts answered by the frozen LLM itself (self-distillation)"
        + (f", each used {copies} times" if copies > 1 else "") + f", {fraction:.0%} of the lm stages' examples")
    prompts = general_prompts(unique)
    answers = distil_answers(model, prompts, progress=progress)
    answered = sum(1 for a in answers if a.strip())
    if not answered:
        say("general data: the LLM answered none of the prompts (empty answers); nothing mixed in")
        return None
    if answered < unique:
        say(f"general data: {unique - answered} empty answers left out")
    media = media_parts(manifest, limit=64) if manifest.suffix == ".jsonl" else []
    path = write_general_manifest(manifest.parent / GENERAL_FILE, prompts, answers, media=media, copies=copies)
    return {"path": str(path), "unique": answered, "copies": copies, "fraction": fraction,
            "with_media": bool(media)}


def _write(out: Path, plan: dict[str, Any], recipe: Recipe, timing: Any, steps: dict[str, int],
           estimate: float | None, general: dict[str, Any] | None) -> None:
    from xmm.io import atomic_write

    head = [f"# Written by `xmm init plan` from the {recipe.modality} plugin's recipe: {recipe.description}"]
    if timing is not None:
        per_step = ", ".join(f"{n} {t.s_per_step:.3g} s/step" for n, t in timing.stages.items() if n in steps)
        head.append(f"# Measured on the machine that wrote it: {per_step}; estimated {estimate / 60:.1f} min in all.")
    if general is not None:
        head.append(f"# {Path(general['path']).name}: general instructions answered by the frozen LLM itself "
                    f"(self-distillation), {general['fraction']:.0%} of the lm stages' data, so the model keeps "
                    "answering questions that are not about the task.")
    head.append("# Next: xmm cache build THIS.yaml && xmm train THIS.yaml  (--resume continues a stopped run)")
    text = "\n".join(head) + "\n" + yaml.safe_dump(plan, sort_keys=False)
    atomic_write(out, lambda f: f.write_text(text, encoding="utf-8"))
