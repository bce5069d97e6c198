"""The pre-upload audit: frozen weights never reach the Hub, however they got into the folder."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from xmm import hub
from xmm.errors import CheckpointError


def _copy(checkpoint, tmp_path):
    dst = tmp_path / "tampered"
    shutil.copytree(checkpoint, dst)
    return dst


def test_clean_checkpoint_passes_every_check(checkpoint, trained_model, tmp_path):
    report = hub.prepare_checkpoint(checkpoint, tmp_path / "stage", model=trained_model)
    assert report.n_tensors == 10 and report.total_bytes > 0


def test_full_llm_weights_at_top_level_are_refused(checkpoint, trained_model, tmp_path):
    dst = _copy(checkpoint, tmp_path)
    # the wrapped LLM's own names (model.embed_tokens.base.weight, ...), clones so that tied weights can be saved
    state = {k: v.clone() for k, v in trained_model.llm.state_dict().items() if "lora_" not in k and ".new." not in k}
    assert "model.embed_tokens.base.weight" in state
    save_file(state, str(dst / "model.safetensors"))
    with pytest.raises(CheckpointError, match="named like a frozen base-model weight"):
        hub.prepare_checkpoint(dst, tmp_path / "stage")


def test_embedding_matrix_under_any_name_is_refused_by_shape(checkpoint, trained_model, tmp_path):
    dst = _copy(checkpoint, tmp_path)
    emb = trained_model.llm.get_input_embeddings().base.weight.detach().clone()
    save_file({"rows": emb}, str(dst / "new_tokens.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape of the LLM's embedding matrix \(64, 16\)"):
        hub.prepare_checkpoint(dst, tmp_path / "stage")


def test_a_copied_frozen_tensor_is_refused_by_value_when_the_model_is_known(trained_model, tmp_path):
    # a bridge weight that is a frozen LLM weight of the same shape: its name and shape look innocent
    target = trained_model.bridges["smell"].mlp[2].weight  # Linear(16 -> 16)
    donor = trained_model.llm.model.layers[0].self_attn.o_proj.weight  # [16, 16], frozen
    with torch.no_grad():
        target.copy_(donor)
    ckpt = trained_model.save_pretrained(tmp_path / "ckpt")
    # without the model only names and the embedding shape can be checked, and both pass
    hub.prepare_checkpoint(ckpt, tmp_path / "stage-names-only")
    with pytest.raises(CheckpointError, match=r"'mlp.2.weight' \(16, 16\) equals a frozen weight of the model"):
        hub.prepare_checkpoint(ckpt, tmp_path / "stage-by-value", model=trained_model)


def test_frozen_encoder_weights_are_refused_by_value(trained_model, tmp_path):
    enc = trained_model.encoders["smell"]
    ckpt = trained_model.save_pretrained(tmp_path / "ckpt")
    save_file({"weight": enc.proj.weight.detach().clone().contiguous()}, str(ckpt / "bridges/smell/extra.safetensors"))
    with pytest.raises(CheckpointError, match="equals a frozen weight"):
        hub.prepare_checkpoint(ckpt, tmp_path / "stage", model=trained_model)


def test_lora_adapter_may_hold_lora_tensors_only(checkpoint, tmp_path):
    dst = _copy(checkpoint, tmp_path)
    state = load_file(str(dst / "lora/adapter_model.safetensors"))
    state["base_model.model.model.norm.weight"] = torch.ones(16)  # peft's modules_to_save would add such a copy
    save_file(state, str(dst / "lora/adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="not a LoRA weight"):
        hub.prepare_checkpoint(dst, tmp_path / "stage")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "bridges/smell/weights.pt", "model.gguf"])
def test_opaque_weight_formats_are_refused(checkpoint, tmp_path, name):
    dst = _copy(checkpoint, tmp_path)
    torch.save({"w": torch.zeros(2)}, dst / name)
    with pytest.raises(CheckpointError, match="cannot be checked for frozen weights"):
        hub.prepare_checkpoint(dst, tmp_path / "stage")


def test_corrupt_safetensors_and_symlinks_are_refused(checkpoint, tmp_path):
    dst = _copy(checkpoint, tmp_path)
    (dst / "bridges/smell/model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        hub.prepare_checkpoint(dst, tmp_path / "stage")
    stage = tmp_path / "stage2"
    stage.mkdir()
    (stage / "link.json").symlink_to(checkpoint / "xmm.json")
    with pytest.raises(CheckpointError, match="symbolic link"):
        hub.audit_folder(stage)


def test_staging_folder_must_be_empty(checkpoint, tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "old.txt").write_text("x")
    with pytest.raises(CheckpointError, match="must be empty"):
        hub.prepare_checkpoint(checkpoint, tmp_path / "stage")
