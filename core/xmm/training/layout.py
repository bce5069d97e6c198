"""Names of the files and folders a training run writes (``<run>`` is the plan's ``output_dir``)::

    <run>/plan.yaml                     the plan as run
    <run>/model/                        the final model (MultimodalLM.save_pretrained: only what was trained)
    <run>/summary.json                  steps, last losses and evaluation of every stage, bad samples
    <run>/logs/train.jsonl              one record per logged step, plus stage/summary events
    <run>/loss_curve.png                (with the ``plot`` extra)
    <run>/checkpoints/latest            one line: the name of the newest complete checkpoint
    <run>/checkpoints/<name>/           step-00000050 (periodic) or stage-1-align (end of a stage), holding
        model/ [eval.json]  trained.safetensors  optimizer.{json,safetensors}  scheduler.{json,safetensors}
        trainer_state.json  rng/rank-<r>.{json,safetensors}   (no pickle anywhere: xmm.persist.state)
"""

from __future__ import annotations

PLAN_FILE = "plan.yaml"
MODEL_DIR = "model"
SUMMARY_FILE = "summary.json"
LOG_FILE = "logs/train.jsonl"
LOSS_CURVE = "loss_curve.png"
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
TRAINED_WEIGHTS = "trained.safetensors"
TRAINER_STATE = "trainer_state.json"
EVAL_FILE = "eval.json"
