"""``xmm chat``: one answer, interactive chat with history, errors before loading the model, media options made
from the installed modalities (one that core has never heard of included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from typer.testing import CliRunner
from xmm import hookimpl
from xmm.cli.main import app
from xmm.modality import ModalitySpec
from xmm.model import MultimodalLM

runner = CliRunner()


def test_one_shot_answer_matches_generate(tiny_model, media_dir: Path, tmp_path: Path) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    img = str(media_dir / "red.png")
    res = runner.invoke(app, ["chat", str(ck), "--image", img, "--audio", str(media_dir / "short.npy"), "--max-new-tokens", "6",
                              "what is it?"])
    assert res.exit_code == 0, res.output
    msgs = [{"role": "user", "content": [{"type": "image", "path": img}, {"type": "audio", "path": str(media_dir / "short.npy")},
                                         {"type": "text", "text": "what is it?"}]}]
    assert res.stdout == tiny_model.generate(msgs, max_new_tokens=6).text + "\n"
    # literal placeholders in the prompt are filled in order instead
    res2 = runner.invoke(app, ["chat", str(ck), "--image", img, "--max-new-tokens", "6", "is <image> red?"])
    assert res2.exit_code == 0, res2.output
    ref = tiny_model.generate([{"role": "user", "content": "is <image> red?"}], media=[{"type": "image", "path": img}], max_new_tokens=6)
    assert res2.stdout == ref.text + "\n"


def test_interactive_keeps_history_and_resets(tiny_model, tmp_path: Path, tiny_config) -> None:
    cfg_path = tmp_path / "model.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config()))
    res = runner.invoke(app, ["chat", str(cfg_path), "--max-new-tokens", "4"], input="hi\nagain\n/reset\nhi\n/bogus\n/exit\n")
    assert res.exit_code == 0, res.output
    answers = res.stdout.split("\n")[:-1]
    first = tiny_model.generate("hi", max_new_tokens=4).text
    second = tiny_model.generate([{"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
                                  {"role": "user", "content": "again"}], max_new_tokens=4).text
    assert answers == [first, second, first]
    assert "untrained" in res.stderr and "(history cleared)" in res.stderr and "unknown command '/bogus'" in res.stderr


def test_errors_are_clear_and_early(tiny_model, media_dir: Path, tmp_path: Path, monkeypatch) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(MultimodalLM, "from_pretrained", no_load)
    from xmm.cli.main import main

    for args, msg in [
        (["--image", str(media_dir / "nope.png")], "image input '" + str(media_dir / "nope.png") + "': file not found"),
        (["--media", "smell"], "expected MODALITY=PATH"),
    ]:
        res = runner.invoke(app, ["chat", str(ck), *args, "hi"])
        assert res.exit_code != 0
        assert msg in str(res.exception)
    monkeypatch.undo()
    res = runner.invoke(app, ["chat", str(ck), "--media", f"video={media_dir / 'red.png'}", "hi"])
    assert "has no modality ['video']" in str(res.exception)
    # no video plugin here, so no --video option
    res = runner.invoke(app, ["chat", str(ck), "--video", str(media_dir / "red.png"), "hi"])
    assert res.exit_code == 2 and "No such option: --video" in res.output
    assert callable(main)


def test_media_options_follow_the_command_line_order(tiny_model, media_dir: Path, tmp_path: Path) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    img, aud = str(media_dir / "red.png"), str(media_dir / "short.npy")
    res = runner.invoke(app, ["chat", str(ck), "--audio", aud, "--image", img, "--max-new-tokens", "6", "what?"])
    assert res.exit_code == 0, res.output
    msgs = [{"role": "user", "content": [{"type": "audio", "path": aud}, {"type": "image", "path": img},
                                         {"type": "text", "text": "what?"}]}]
    assert res.stdout == tiny_model.generate(msgs, max_new_tokens=6).text + "\n"
    # --image is --media image=PATH
    res2 = runner.invoke(app, ["chat", str(ck), "--media", f"audio={aud}", "--media", f"image={img}",
                               "--max-new-tokens", "6", "what?"])
    assert res2.stdout == res.stdout
    swapped = runner.invoke(app, ["chat", str(ck), "--image", img, "--audio", aud, "--max-new-tokens", "6", "what?"])
    assert swapped.stdout != res.stdout  # the order is the model's input, not a fixed one


def load_smell(raw: str) -> np.ndarray:
    return np.load(raw).astype(np.float32)


class SmellPlugin:
    """A modality core has never heard of: .npy clips read by the tiny audio encoder."""

    @hookimpl
    def xmm_modalities(self) -> list[ModalitySpec]:
        return [ModalitySpec(name="smell", placeholder="<smell>", load=load_smell, encoder="tiny-audio",
                             bridge={"type": "linear"}, file_extensions=(".npy",))]


def test_a_plugin_modality_gets_its_option_and_interactive_command(registry, tiny_llm, tiny_config, media_dir: Path,
                                                                   tmp_path: Path) -> None:
    assert registry.register(SmellPlugin(), name="smell").error is None
    help_text = runner.invoke(app, ["chat", "--help"]).output
    assert "--smell" in help_text and "--image" in help_text and "--video" not in help_text
    torch.manual_seed(0)
    model = MultimodalLM.from_config(tiny_config(modalities={"smell": {}}), llm=tiny_llm, registry=registry)
    ck = model.save_pretrained(tmp_path / "ck")
    clip = str(media_dir / "long.npy")
    res = runner.invoke(app, ["chat", str(ck), "--smell", clip, "--max-new-tokens", "5", "what is it?"])
    assert res.exit_code == 0, res.output
    msgs = [{"role": "user", "content": [{"type": "smell", "path": clip}, {"type": "text", "text": "what is it?"}]}]
    assert res.stdout == model.generate(msgs, max_new_tokens=5).text + "\n"
    # interactive: /smell PATH attaches the clip to the next message; the help names the model's modalities
    res = runner.invoke(app, ["chat", str(ck), "--max-new-tokens", "5"], input=f"/smell {clip}\nwhat is it?\n/exit\n")
    assert res.exit_code == 0, res.output
    assert res.stdout == model.generate(msgs, max_new_tokens=5).text + "\n"
    assert "/smell PATH attaches media" in res.stderr and "(smell attached to the next message)" in res.stderr
