"""NExT-GPT's "~1% of the parameters are trained", measured on an xmm model with the real SmolLM2-135M-Instruct.

The model is NExT-GPT-shaped for images in and out: a frozen image encoder (EfficientNet-Lite0, the offline stand-in
for ImageBind) with a trainable ``linear`` input projection, the frozen LLM with 4 trainable signal tokens
``<img_0>..<img_3>`` (only their rows), a trainable ``transformer`` output projector (NExT-GPT's widths) and a frozen
Stable Diffusion v1.5 decoder. SD 1.5's weights are not available offline, so its UNet, VAE and CLIP text encoder are
built from their published configurations on PyTorch's ``meta`` device: exact parameter counts (859.5M, 83.7M,
123.1M), no memory, no weights - enough to count and to derive the 77 x 768 conditioning shape.

NExT-GPT (arXiv 2309.05519) trains 155M of 155M + 12.275B parameters (1.25%) with Vicuna-7B; the ratio depends
mostly on the LLM and decoder sizes, which this prints next to xmm's figures.

    python benchmarks/nextgpt_params.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

NEXTGPT = {"trainable": 155e6, "frozen": 12.275e9}


def sd15_skeleton() -> Any:
    """A ``StableDiffusionPipeline`` with SD 1.5's architecture on the meta device (parameter counts, no weights)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from xmm.decoders.tiny import _char_vocab

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, projection_dim=768,
        ))
    # CLIP's real BPE vocabulary is not needed to count: a character vocabulary with CLIP's 77-token length
    tokenizer = CLIPTokenizer(vocab=_char_vocab(["<|startoftext|>", "<|endoftext|>"]), merges=[], model_max_length=77)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)


def count(model: Any) -> dict[str, Any]:
    """Trainable parts (NExT-GPT's: input projection, signal-token rows, output projector) against every frozen
    parameter (LLM, encoder, decoder pipeline)."""
    comps = model.named_components()

    def params(c: Any) -> list[torch.nn.Parameter]:
        return list(c.parameters()) if isinstance(c, torch.nn.Module) else list(c)

    trainable_parts = {name: params(comps[name]) for name in comps if name.split(":")[0] in {"bridge", "projector"}}
    trainable_parts["llm:embeddings:new"] = params(comps.get("llm:embeddings:new", []))
    trainable_ids = {id(p) for ps in trainable_parts.values() for p in ps}
    sizes = {name: sum(p.numel() for p in ps) for name, ps in trainable_parts.items()}
    frozen = {
        "llm": sum(p.numel() for p in model.llm.parameters() if id(p) not in trainable_ids),
        **{f"encoder:{m}": sum(p.numel() for p in e.parameters()) for m, e in model.encoders.items()},
        **{f"decoder:{m}": int(d.num_parameters()) for m, d in model.decoders.items() if hasattr(d, "num_parameters")},
    }
    trainable = sum(sizes.values())
    frozen_total = sum(frozen.values())
    without_decoders = sum(v for k, v in frozen.items() if not k.startswith("decoder:"))
    return {
        "trainable": sizes,
        "trainable_total": trainable,
        "frozen": frozen,
        "frozen_total": frozen_total,
        "trainable_share": trainable / (trainable + frozen_total),
        "trainable_share_without_decoders": trainable / (trainable + without_decoders),
        "nextgpt_trainable_share": NEXTGPT["trainable"] / (NEXTGPT["trainable"] + NEXTGPT["frozen"]),
        "condition_shape": list(next(iter(model.decoders.values())).condition_shape),
    }


def build_model(projector: dict[str, Any] | None = None) -> Any:
    from xmm.decoders.diffusion import DiffusersDecoder
    from xmm.model.multimodal import MultimodalLM

    config = {
        "llm": "smollm2", "device": "cpu",
        "modalities": {"image": {"bridge": {"type": "linear"}}},
        "outputs": {"image": {"decoder": "diffusers", "projector": projector or {"type": "transformer"}}},
    }
    return MultimodalLM.from_config(config, decoders={"image": DiffusersDecoder(sd15_skeleton())})


def _fmt(n: int) -> str:
    return f"{n / 1e3:.1f}K" if n < 1e5 else f"{n / 1e6:.2f}M"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    report = count(build_model())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("trainable:", ", ".join(f"{k} {_fmt(v)}" for k, v in report["trainable"].items()),
          f"= {_fmt(report['trainable_total'])}")
    print("frozen:   ", ", ".join(f"{k} {_fmt(v)}" for k, v in report["frozen"].items()), f"= {_fmt(report['frozen_total'])}")
    print(f"trainable share: {report['trainable_share']:.2%} of everything "
          f"({report['trainable_share_without_decoders']:.2%} without the decoder); "
          f"NExT-GPT: {report['nextgpt_trainable_share']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
