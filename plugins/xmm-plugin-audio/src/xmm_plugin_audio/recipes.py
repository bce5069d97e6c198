"""The audio modality's recommended training: CREPE pitch features in order through an MLP bridge."""

from __future__ import annotations

from xmm.recipes import Recipe, RecipeStage

AUDIO_RECIPE = Recipe(
    modality="audio",
    description="CREPE (tiny) pitch features, 10 tokens/s, each mapped by an MLP; align, integrate",
    # a 1-2 s clip is 10-20 tokens kept in time order, so the LLM reads the pitch track itself (a Q-Former would
    # pool it into 32 unordered queries)
    encoder="torchcrepe",
    bridge={"type": "mlp"},
    stages=(
        RecipeStage(name="align", objectives=["lm"], data=("train", "captions"), batch_size=16, lr=2e-3, steps=200),
        RecipeStage(name="integrate", joint=True, objectives=["lm"], batch_size=16, lr=4e-4, steps=66,
                    warmup_ratio=0.0),
    ),
)

RECIPES = {"audio": AUDIO_RECIPE}
