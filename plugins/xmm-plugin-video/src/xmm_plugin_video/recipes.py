"""The video modality's recommended training: per-frame CNN tokens in frame order through a question-guided MLP
bridge, with X-LLM's LLM-free convert stage first (what lifted the image and device tasks)."""

from __future__ import annotations

from xmm.recipes import Recipe, RecipeStage

FRAMES, GRID = 8, 3

VIDEO_RECIPE = Recipe(
    modality="video",
    description="8 frames of EfficientNet-Lite0's last block pooled to 3x3 + sinusoidal frame embedding (72 tokens in "
                "frame order) -> guided-mlp (2 question-guided tokens); convert (no LLM layer), align, integrate",
    encoder="video-frames",
    # the last block (320-d) keeps where a shape is; the same setting as the image recipe, so both share one encoder
    encoder_config={"frame_encoder_config": {"pool_grid": GRID, "layer": "penultimate"}},
    # the guided tokens attend over all 72 tokens with learned per-(frame, cell) position vectors, so a pooled token
    # can say where the shape was early and late; the per-token MLP outputs keep the frame order for the LLM
    bridge={"type": "guided-mlp", "guided_tokens": 2, "max_inputs": FRAMES * GRID * GRID},
    stages=(
        RecipeStage(name="convert", objectives=["guided_answer"], batch_size=32, lr=3e-3, steps=400),
        RecipeStage(name="align", objectives=["lm"], batch_size=16, lr=2e-3, steps=150),
        RecipeStage(name="integrate", joint=True, objectives=["lm"], batch_size=16, lr=4e-4, steps=50,
                    warmup_ratio=0.0),
    ),
)

RECIPES = {"video": VIDEO_RECIPE}
