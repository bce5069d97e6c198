"""Core contracts: errors, Encoder freezing and collation, EncoderOutput, ModalitySpec, atomic writes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import (
    ConfigError,
    CorruptMediaError,
    MediaError,
    MissingDependencyError,
    ShapeError,
    XmmError,
)
from xmm.io import atomic_write, atomic_write_text
from xmm.modality import ModalitySpec, default_fingerprint


class _Tiny(Encoder):
    id = "tiny"
    output_dim = 2

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.drop = nn.Dropout(0.5)

    def preprocess(self, raw):
        return {"x": torch.as_tensor(raw, dtype=torch.float32)}

    def forward(self, x, lengths=None):
        t = x.shape[1]
        mask = torch.ones(x.shape[:2], dtype=torch.bool) if lengths is None else torch.arange(t)[None] < lengths[:, None]
        return EncoderOutput(self.drop(self.lin(x)), mask)


def test_errors_share_a_base_and_name_the_source():
    e = CorruptMediaError("not a PNG file", source="img/1.png", modality="image")
    assert isinstance(e, MediaError) and isinstance(e, XmmError) and isinstance(e, ValueError)
    assert str(e) == "image input 'img/1.png': not a PNG file"
    assert "<12 bytes>" in str(MediaError("bad", source=b"x" * 12))
    c = ConfigError("must be > 0", field="stages.1.lr", source="plan.yaml")
    assert str(c) == "plan.yaml: field 'stages.1.lr': must be > 0"
    m = MissingDependencyError("av", extra="video", purpose="decoding video")
    assert isinstance(m, ImportError) and "pip install 'xmm-core[video]'" in str(m)


def test_frozen_encoder_stays_in_eval_and_has_no_grads():
    enc = _Tiny().freeze()
    parent = nn.ModuleDict({"enc": enc})
    parent.train()
    assert not enc.training and not enc.drop.training
    assert all(not p.requires_grad for p in enc.parameters())
    out1 = enc.encode([[[1.0, 2.0]]])
    out2 = enc.encode([[[1.0, 2.0]]])
    assert torch.equal(out1.features, out2.features)  # dropout is off
    assert not out1.features.requires_grad


def test_unfrozen_encoder_trains():
    enc = _Tiny()
    assert enc.frozen  # frozen by default
    enc.unfreeze()
    enc.train()
    assert enc.training and all(p.requires_grad for p in enc.parameters())


def test_default_collate_pads_and_reports_lengths():
    enc = _Tiny()
    batch = enc.collate([enc.preprocess([[1, 1], [2, 2], [3, 3]]), enc.preprocess([[4, 4]])])
    assert batch["x"].shape == (2, 3, 2)
    assert batch["lengths"].tolist() == [3, 1]
    assert torch.equal(batch["x"][1, 1:], torch.zeros(2, 2))
    with pytest.raises(ShapeError, match="differ beyond the first axis"):
        enc.collate([{"x": torch.zeros(2, 2)}, {"x": torch.zeros(2, 3)}])


def test_encoder_output_checks_and_split_pad_round_trip():
    with pytest.raises(ShapeError, match=r"\[B, T, D\]"):
        EncoderOutput(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ShapeError, match="mask"):
        EncoderOutput(torch.zeros(2, 3, 4), torch.ones(2, 4))
    feats = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    parts = EncoderOutput(feats, mask).split()
    assert [p.features.shape[1] for p in parts] == [4, 2]
    again = EncoderOutput.pad(parts)
    assert torch.equal(again.mask, mask)
    assert torch.equal(again.features[mask], feats[mask])


def test_modality_spec_validation_and_fingerprint(tmp_path):
    with pytest.raises(ConfigError, match="name"):
        ModalitySpec(name="Bad Name", load=str, encoder="e")
    with pytest.raises(ConfigError, match="placeholder"):
        ModalitySpec(name="x", placeholder="x", load=str, encoder="e")
    with pytest.raises(ConfigError) as e:
        ModalitySpec(name="x", load=str)
    assert e.value.field == "encoder"
    with pytest.raises(ConfigError) as e:
        ModalitySpec(name="x", load=str, encoder="e", bridge={"num_queries": 4})
    assert e.value.field == "bridge"
    with pytest.raises(TypeError, match="unexpected"):
        ModalitySpec(name="x", load=str, encoder="e", num_queries=4)
    spec = ModalitySpec(name="x", load=str, encoder="e")
    assert spec.placeholder == "<x>" and spec.bridge == {"type": "qformer"} and dict(spec.encoder_config) == {}
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    assert spec.content_hash(f) == spec.content_hash(b"hello") == default_fingerprint(str(f))
    with pytest.raises(MediaError, match="missing.bin"):
        spec.content_hash(tmp_path / "missing.bin")
    with pytest.raises(MediaError, match="in-memory"):
        spec.content_hash(object())


def test_modality_spec_still_takes_the_old_wide_keywords_with_a_warning():
    with pytest.warns(DeprecationWarning, match="default_bridge"):
        old = ModalitySpec("x", "<x>", str, default_encoder="e", default_encoder_config={"k": 1}, default_bridge="mlp",
                           default_bridge_config={"hidden_dim": 8}, num_query_tokens=5)
    new = ModalitySpec("x", load=str, encoder="e", encoder_config={"k": 1}, bridge={"type": "mlp", "hidden_dim": 8})
    assert (old.encoder, old.encoder_config, old.bridge) == (new.encoder, new.encoder_config, new.bridge)
    with pytest.warns(DeprecationWarning, match="spec.encoder"):
        assert old.default_encoder == "e"
    with pytest.warns(DeprecationWarning):
        assert (old.default_bridge, dict(old.default_bridge_config)) == ("mlp", {"hidden_dim": 8})
    with pytest.warns(DeprecationWarning):
        assert old.num_query_tokens == 5
    with pytest.warns(DeprecationWarning):
        assert new.num_query_tokens is None
    with pytest.raises(ConfigError, match="num_query_tokens"), pytest.warns(DeprecationWarning):
        ModalitySpec("x", load=str, default_encoder="e", num_query_tokens=0)


def test_encoder_says_its_token_count_only_when_fixed():
    assert _Tiny().num_output_tokens() is None


def test_decoder_contract_defaults_describe_what_it_produces():
    from xmm.decoder import Decoder

    class Result(Decoder):
        modality = "thing"
        input_kind = "text"
        output_kind = "result"

        def produced(self, output):
            return output is not None and output != ""

    plain, result = Decoder(), Result()
    assert plain.output_kind == "media" and plain.signal_prefix is None and plain.rebuild_config() is None
    assert plain.produced(1) and not plain.produced(None)
    assert result.produced("ok") and not result.produced("")
    assert result.describe_output("ok") == {"modality": "thing", "kind": "result", "type": "str"}
    assert result.describe() == {"id": "decoder", "revision": "0"}
    with pytest.raises(NotImplementedError, match="cannot save"):
        result.save_output("ok", "stem")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "v1")

    def boom(p):
        p.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
