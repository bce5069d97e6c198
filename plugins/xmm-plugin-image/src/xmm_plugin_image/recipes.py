"""The image modality's recommended training: EfficientNet-Lite0's last block and a question-guided MLP bridge."""

from __future__ import annotations

from xmm.recipes import Recipe, RecipeStage

# the convert stage scores each guided token against the batch's answer words and this many fixed other rows of the
# LLM's 49k-row embedding table instead of all of them: the full table's logits were most of the stage's fp32 work
CONVERT_NEGATIVES = 1024

IMAGE_RECIPE = Recipe(
    modality="image",
    description="EfficientNet-Lite0 last block pooled to 3x3 -> guided-mlp (2 tokens per cell + 2 question-guided "
                "tokens); X-LLM stages: convert (no LLM layer), align, integrate",
    encoder="efficientnet-lite0",
    # the last block (320-d, before the 1x1 head conv to 1280) keeps shape and place; a 3x3 grid puts the five scene
    # positions in distinct cells
    encoder_config={"pool_grid": 3, "layer": "penultimate"},
    # two LLM tokens per cell with learned position vectors, plus question-guided tokens: the bridge finds "the
    # circle" itself, which a frozen small LLM learns only slowly from soft tokens
    bridge={"type": "guided-mlp", "tokens_per_input": 2, "position_embeddings": 18, "guided_tokens": 2},
    stages=(
        RecipeStage(name="convert", objectives=["guided_answer"],
                    objective_params={"guided_answer": {"negatives": CONVERT_NEGATIVES}}, batch_size=64, lr=3e-3,
                    steps=1000),
        RecipeStage(name="align", objectives=["lm"], batch_size=16, lr=2e-3, steps=150),
        RecipeStage(name="integrate", joint=True, objectives=["lm"], batch_size=16, lr=4e-4, steps=50,
                    warmup_ratio=0.0),
    ),
)

RECIPES = {"image": IMAGE_RECIPE}
