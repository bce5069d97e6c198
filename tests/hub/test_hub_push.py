"""Pushing: the folder that would be uploaded, the model card, the HfApi calls' arguments, token hygiene, the CLI.

The network is replaced at the HfApi boundary (create_repo / create_branch / upload_folder); everything up to those
calls is the real code path.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from hubtest_support import EVAL, PLAN, TOKEN, files_under
from huggingface_hub import ModelCard
from xmm import hub
from xmm.cli.main import main
from xmm.errors import CheckpointError, ConfigError

CHECKPOINT_FILES = [
    "README.md",
    "bridges/smell/config.json",
    "bridges/smell/model.safetensors",
    "eval.json",
    "lora/adapter_config.json",
    "lora/adapter_model.safetensors",
    "new_tokens.safetensors",
    "plan.yaml",
    "xmm.json",
]


def test_push_model_uploads_trained_parts_and_card(trained_model, fake_hub, tmp_path):
    url = hub.push_model(trained_model, "me/smell-lm", private=True, commit_message="first")
    assert fake_hub.names() == ["create_repo", "upload_folder"]
    repo = fake_hub.kwargs("create_repo")
    assert (repo["repo_id"], repo["repo_type"], repo["private"], repo["exist_ok"]) == ("me/smell-lm", "model", True, True)
    up = fake_hub.kwargs("upload_folder")
    assert (up["repo_id"], up["repo_type"], up["revision"], up["commit_message"]) == ("me/smell-lm", "model", None, "first")
    assert up["create_pr"] is False
    assert url.startswith("https://huggingface.co/me/smell-lm/commit/")
    uploaded = fake_hub.uploads[0]
    assert files_under(uploaded) == [f for f in CHECKPOINT_FILES if f not in ("eval.json", "plan.yaml")]
    # what was uploaded is the model's trained state, value for value
    from safetensors.torch import load_file

    bridge = load_file(uploaded / "bridges/smell/model.safetensors")
    for k, v in trained_model.bridges["smell"].state_dict().items():
        assert torch.equal(bridge[k], v)
    assert set(load_file(uploaded / "lora/adapter_model.safetensors")) == set(trained_model.lora_state_dict())
    # the upload is small: nothing of the size of the LLM's embedding matrix
    total = sum((uploaded / f).stat().st_size for f in files_under(uploaded))
    emb = trained_model.llm.get_input_embeddings().base.weight
    assert total < emb.numel() * 4 * 4


def test_model_card_describes_the_checkpoint(checkpoint, tmp_path):
    report = hub.prepare_checkpoint(checkpoint, tmp_path / "stage", repo_id="me/smell-lm")
    assert list(report.files) == CHECKPOINT_FILES
    card = ModelCard.load(tmp_path / "stage" / "README.md")
    assert card.data.library_name == "xmm"
    assert card.data.base_model == "tiny-org/tiny-llama"
    assert card.data.tags == ["xmm", "multimodal", "smell", "bridge-mlp", "lora"]
    text = card.text
    manifest = json.loads((checkpoint / "xmm.json").read_text())
    assert f"| tiny-org/tiny-llama | abc123 | {manifest['llm']['embedding_fingerprint']} | 16 |" in text
    # Q comes from the manifest (what the bridge reported when saved), never from bridge config field names
    q = manifest["modalities"]["smell"].get("media_tokens", "-")
    assert f"| smell | `<smell>` | smell-encoder | mlp | {'input-dependent' if q is None else q} |" in text
    assert "| smell | test/smell-encoder | r1 | frozen | xmm-plugin-hubtest 0.0.1 |" in text
    # parameter count read from the safetensors headers: MLP 32 -> 16 -> 16 with biases
    assert "| bridges/smell | mlp | smell | 800 |" in text
    assert "| align | bridge:smell | lm | 100 |" in text
    assert f"| eval | exact | {EVAL['score']} | {EVAL['n']} |" in text
    assert 'MultimodalLM.from_pretrained("me/smell-lm")' in text
    assert "pip install xmm-core xmm-plugin-hubtest==0.0.1" in text


@pytest.mark.parametrize(("recorded", "shown"), [(7, "7"), (None, "input-dependent"), ("absent", "-")])
def test_card_tokens_per_item_is_what_the_manifest_records(checkpoint, tmp_path, recorded, shown):
    manifest = json.loads((checkpoint / "xmm.json").read_text())
    entry = manifest["modalities"]["smell"]
    entry.pop("media_tokens", None)
    if recorded != "absent":  # manifests written before the count was recorded have no such key
        entry["media_tokens"] = recorded
    text = hub.checkpoint_card(checkpoint, manifest, repo_id="me/smell-lm")
    assert f"| smell | `<smell>` | smell-encoder | mlp | {shown} |" in text


def test_revision_creates_the_branch_and_create_pr_does_not(checkpoint, fake_hub):
    hub.push_checkpoint(checkpoint, "me/smell-lm", revision="stage-2")
    assert fake_hub.names() == ["create_repo", "create_branch", "upload_folder"]
    branch = fake_hub.kwargs("create_branch")
    assert (branch["branch"], branch["repo_type"], branch["exist_ok"]) == ("stage-2", "model", True)
    assert fake_hub.kwargs("upload_folder")["revision"] == "stage-2"
    fake_hub.calls.clear()
    hub.push_checkpoint(checkpoint, "me/smell-lm", create_pr=True)
    assert fake_hub.names() == ["create_repo", "upload_folder"]
    assert fake_hub.kwargs("upload_folder")["create_pr"] is True
    fake_hub.calls.clear()
    with pytest.raises(ConfigError, match="pull request always targets the main branch"):
        hub.push_checkpoint(checkpoint, "me/smell-lm", revision="stage-2", create_pr=True)
    assert fake_hub.calls == []


def test_token_reaches_the_client_but_no_file_output_or_log(checkpoint, fake_hub, tmp_path, capsys, caplog,
                                                             monkeypatch):
    caplog.set_level(logging.DEBUG)
    hub.push_checkpoint(checkpoint, "me/smell-lm", token=TOKEN, staging_dir=tmp_path / "kept")
    assert [kw["auth"] for _, kw in fake_hub.calls] == [f"Bearer {TOKEN}"] * 2
    # the CLI path takes the token from the environment, as huggingface_hub does
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(SystemExit) as done:
        main(["push", str(checkpoint), "me/smell-lm", "--out", str(tmp_path / "kept-cli")])
    assert done.value.code == 0
    assert fake_hub.calls[-1][1]["auth"] == f"Bearer {TOKEN}"
    # a refused upload: the error message does not carry it either
    from httpx2 import Request, Response
    from huggingface_hub.errors import HfHubHTTPError

    response = Response(401, request=Request("POST", "https://huggingface.co/api/models/me/smell-lm/commit/main"))
    fake_hub.fail_with = HfHubHTTPError("401 Unauthorized", response=response)
    with pytest.raises(CheckpointError, match="refused the credentials") as refused:
        hub.push_checkpoint(checkpoint, "me/smell-lm", token=TOKEN)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 2 * len(CHECKPOINT_FILES)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    out = capsys.readouterr()
    for text in (out.out, out.err, caplog.text, str(refused.value)):
        assert TOKEN not in text


def test_push_refused_offline_and_with_bad_repo_id(checkpoint, fake_hub, monkeypatch):
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        hub.push_checkpoint(checkpoint, "not a/valid/repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        hub.push_checkpoint(checkpoint, "me/smell-lm")
    assert fake_hub.calls == []


def test_cli_dry_run_stages_and_audits_without_network(checkpoint, fake_hub, tmp_path, capsys):
    out = tmp_path / "staged"
    with pytest.raises(SystemExit) as done:
        main(["push", str(checkpoint), "me/smell-lm", "--dry-run", "--out", str(out)])
    assert done.value.code == 0
    assert fake_hub.calls == []
    assert files_under(out) == CHECKPOINT_FILES
    printed = capsys.readouterr().out
    assert "audited: no frozen weights" in printed and "dry run" in printed
    assert all(f"  {name}" in printed for name in CHECKPOINT_FILES)


def test_cli_push_passes_private_and_revision(checkpoint, fake_hub, capsys):
    with pytest.raises(SystemExit) as done:
        main(["push", str(checkpoint), "me/smell-lm", "--private", "--revision", "v1", "-m", "msg"])
    assert done.value.code == 0
    assert fake_hub.kwargs("create_repo")["private"] is True
    up = fake_hub.kwargs("upload_folder")
    assert (up["revision"], up["commit_message"]) == ("v1", "msg")
    assert "pushed to https://huggingface.co/me/smell-lm/commit/" in capsys.readouterr().out


def test_cli_errors_exit_1_with_a_message(tmp_path, fake_hub, capsys):
    (tmp_path / "empty").mkdir()
    for argv, message in [
        (["push", str(tmp_path / "empty"), "me/x"], "is a folder but not a checkpoint"),
        (["push", str(tmp_path / "missing"), "me/x"], "no such file or folder"),
        (["push", str(tmp_path / "empty"), "bad//id"], "not a Hub repo id"),
    ]:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 1
        assert message in capsys.readouterr().err
    assert fake_hub.calls == []


def test_training_run_folders_upload_the_model_and_never_optimizer_state(trained_model, tmp_path):
    """The trainer's layout: <run>/model (final) and <run>/checkpoints/<name>/{model/, optimizer.pt, ...}."""
    run = tmp_path / "run"
    stage = run / "checkpoints" / "stage-1-align"
    trained_model.save_pretrained(stage / "model")
    (stage / "model" / "eval.json").write_text(json.dumps(EVAL))
    torch.save({"state": {}}, stage / "optimizer.pt")
    (stage / "trainer_state.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("stage-1-align\n")
    (run / "plan.yaml").write_text(PLAN)
    (stage / "model" / ".xmm.json.123.tmp").write_text("half-written")  # leftovers of an interrupted save

    # a run killed before its end: the checkpoint `latest` names; the plan from the run folder
    staged = tmp_path / "staged-partial"
    assert list(hub.prepare_checkpoint(run, staged).files) == CHECKPOINT_FILES
    assert (staged / "bridges/smell/model.safetensors").read_bytes() == (
        stage / "model/bridges/smell/model.safetensors").read_bytes()

    # a finished run: its final model (other weights), with the last stage's evaluation on the card
    with torch.no_grad():
        for p in trained_model.bridges.parameters():
            p.mul_(2.0)
    trained_model.save_pretrained(run / "model")
    (run / "model" / "plan.yaml").write_text(PLAN)
    staged = tmp_path / "staged-final"
    assert list(hub.prepare_checkpoint(run, staged).files) == CHECKPOINT_FILES
    assert (staged / "bridges/smell/model.safetensors").read_bytes() == (
        run / "model/bridges/smell/model.safetensors").read_bytes()
    card = (staged / "README.md").read_text()
    assert "| align | bridge:smell | lm | 100 |" in card and "| eval | exact | 0.875 | 64 |" in card

    # one training checkpoint on its own
    assert list(hub.prepare_checkpoint(stage, tmp_path / "staged-stage").files) == CHECKPOINT_FILES


def test_card_for_shared_bridges_outputs_and_several_evaluations(tmp_path):
    """Card sections from a hand-written manifest: a ChatBridge-style shared bridge, a decoder, epochs, two evals."""
    (tmp_path / "bridges/shared").mkdir(parents=True)
    (tmp_path / "bridges/shared/config.json").write_text(json.dumps({"type": "perceiver", "num_latents": 16}))
    (tmp_path / "plan.yaml").write_text("stages:\n  - name: instruct\n    trainable: [bridge:*, llm:lora]\n"
                                        "    objectives: [{name: lm, weight: 1.0}]\n    epochs: 2\n")
    (tmp_path / "eval.json").write_text(json.dumps({"images": {"metric": "exact", "score": 0.5, "n": 10},
                                                    "speech": {"metric": "wer", "score": 0.125, "n": 8}}))
    plugin = {"distribution": "xmm-plugin-image", "version": "0.1.0"}
    manifest = {
        "llm": {"id": "/tmp/local-llm", "revision": "local", "embedding_fingerprint": "sha256:ab", "hidden_size": 576},
        "modalities": {
            m: {"placeholder": f"<{m}>", "plugin": plugin,
                "encoder": {"name": f"{m}-enc", "id": f"org/{m}", "revision": "7", "plugin": plugin}, "bridge": "shared",
                "media_tokens": q}
            for m, q in (("image", 16), ("video", None))
        },
        "bridges": {"shared": {"type": "perceiver", "path": "bridges/shared", "modalities": ["image", "video"]}},
        "decoders": {"image": {"decoder_id": "diffusers/sd", "decoder_revision": "r2", "signal_tokens": ["<img0>", "<img1>"]}},
    }
    text = hub.checkpoint_card(tmp_path, manifest)
    card = ModelCard(text)
    assert card.data.base_model is None  # a local folder is not a Hub repo id
    assert card.data.tags == ["xmm", "multimodal", "image", "video", "bridge-perceiver"]
    assert "| image | `<image>` | image-enc | perceiver (shared 'shared') | 16 |" in text
    assert "| video | `<video>` | video-enc | perceiver (shared 'shared') | input-dependent |" in text
    assert "| image | diffusers/sd | r2 | <img0>, <img1> |" in text
    assert "| instruct | bridge:*, llm:lora | lm | 2 epochs |" in text
    assert "| images | exact | 0.5 | 10 |" in text and "| speech | wer | 0.125 | 8 |" in text
    assert "pip install xmm-core xmm-plugin-image==0.1.0" in text
