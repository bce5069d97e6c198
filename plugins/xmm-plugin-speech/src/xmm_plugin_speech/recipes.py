"""The speech modality's recommended training: X-LLM's speech interface (CIF + C-Former) over Whisper-base, and an
Ultravox-style frame-stacking bridge to compare it with.

``speech`` (the default) follows X-LLM's stages. **convert**: no LLM layer runs; CIF integrates Whisper's 50 Hz
frames into one vector per transcript token (quantity loss against the transcript's LLM token count) and each fired
vector, read through the frozen LLM's input-embedding table, is trained with cross-entropy against its token
(objective ``cif_tokens``), so the bridge learns to emit the transcript's words. **align**: the LM loss through the
frozen LLM teaches it to read them out; ``cif_tokens`` stays on at half weight so the vectors keep their words.
**integrate**: the joint stage with the other modalities.

``speech-stack`` stacks 8 frames per LLM token and maps them with a SwiGLU MLP (``stack-mlp``); with no token-level
target it trains through the LLM from the start (align, integrate), as Ultravox does.
"""

from __future__ import annotations

from xmm.recipes import Recipe, RecipeStage

# 10 s encoder windows instead of Whisper's 30 s: utterances of 1-7 s encode ~4x faster
ENCODER_CONFIG = {"window_seconds": 10}
# fired vectors read as the token whose embedding they are nearest to
CIF_PARAMS = {"metric": "l2"}

SPEECH_RECIPE = Recipe(
    modality="speech",
    description="Whisper-base (10 s windows) -> CIF + C-Former -> adapter; convert (cif_tokens, no LLM), align (lm), "
                "integrate",
    encoder="whisper-base",
    encoder_config=ENCODER_CONFIG,
    bridge={"type": "cformer", "dropout": 0.0, "prompt_tokens": 8},
    stages=(
        RecipeStage(name="convert", objectives=["cif_tokens"], objective_params={"cif_tokens": CIF_PARAMS},
                    batch_size=32, lr=2e-3, steps=600),
        RecipeStage(name="align", objectives={"lm": 1.0, "cif_tokens": 0.5}, objective_params={"cif_tokens": CIF_PARAMS},
                    batch_size=8, lr=1e-3, steps=300),
        RecipeStage(name="integrate", joint=True, objectives={"lm": 1.0, "cif_tokens": 0.5},
                    objective_params={"cif_tokens": CIF_PARAMS}, batch_size=8, lr=4e-4, steps=100, warmup_ratio=0.0),
    ),
)

SPEECH_STACK_RECIPE = Recipe(
    modality="speech",
    description="Whisper-base (10 s windows) -> 8 stacked frames per token -> SwiGLU MLP (Ultravox-style); align (lm), "
                "integrate",
    encoder="whisper-base",
    encoder_config=ENCODER_CONFIG,
    bridge={"type": "stack-mlp", "stack": 8},
    stages=(
        RecipeStage(name="align", objectives=["lm"], batch_size=8, lr=2e-3, steps=480),
        RecipeStage(name="integrate", joint=True, objectives=["lm"], batch_size=8, lr=4e-4, steps=100,
                    warmup_ratio=0.0),
    ),
)

RECIPES = {"speech": SPEECH_RECIPE, "speech-stack": SPEECH_STACK_RECIPE}
