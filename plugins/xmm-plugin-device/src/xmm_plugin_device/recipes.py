"""The device modality's recommended training: X-LLM's three stages around a question-guided bridge."""

from __future__ import annotations

from xmm.recipes import Recipe, RecipeStage

# the convert stage scores each guided token against the batch's answer words and this many fixed other rows of the
# LLM's 49k-row embedding table instead of all of them: the full table's logits were most of the stage's fp32 work
CONVERT_NEGATIVES = 1024

DEVICE_RECIPE = Recipe(
    modality="device",
    description="X-LLM stages for telemetry: convert (device encoder from scratch + guided bridge, no LLM layer), "
                "align (bridge through the frozen LLM), integrate (with other modalities)",
    # the modality's defaults: one token per telemetry feature from the device transformer, plus the guided-mlp
    # bridge's 8 question-guided tokens
    stages=(
        # the encoder has no pretrained weights: it learns here, with the bridge's guided tokens learning the answer's
        # first tokens through the LLM's own embedding table (guided_answer runs no LLM layer, so large batches are
        # cheap), and stays frozen afterwards
        RecipeStage(name="convert", trainable=("bridge:{modality}", "encoder:{modality}"),
                    lr_groups={"encoder:{modality}": 1e-3}, objectives=["guided_answer"],
                    objective_params={"guided_answer": {"negatives": CONVERT_NEGATIVES}}, batch_size=32, lr=3e-3,
                    steps=2000),
        RecipeStage(name="align", objectives=["lm"], batch_size=16, lr=2e-3, steps=150),
        RecipeStage(name="integrate", joint=True, objectives=["lm"], batch_size=16, lr=4e-4, steps=50,
                    warmup_ratio=0.0),
    ),
)

RECIPES = {"device": DEVICE_RECIPE}
