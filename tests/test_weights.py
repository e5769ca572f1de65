"""Pretrained weights: shipped file hash-checked, local files and URLs, no unsafe unpickling."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest
import torch

from freezebench import plugins
from freezebench.backbone import WeightsRequest
from freezebench.errors import UserError
from freezebench.weights import read_state_dict, sha256_file
from freezebench_plugins.timm_backbones import SHIPPED

from .conftest import SHARED

TV_WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
TV_SHA = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def build(**kw):
    return plugins.backbones().get("mobilenetv2_100").build(3, WeightsRequest(**kw))


def test_shipped_weights_hash_and_source():
    path, expected = SHIPPED["mobilenetv2_100"]
    assert sha256_file(path) == expected
    b = build()
    assert b.weights_source == f"shipped:{path.name}" and b.weights_sha256 == expected
    assert b.model.get_classifier().out_features == 3


@pytest.mark.skipif(not TV_WEIGHTS.is_file(), reason="../shared/weights not present")
def test_shipped_weights_match_torchvision_model():
    from freezebench.torch_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision

    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(TV_WEIGHTS, weights_only=True))
    ours = plugins.backbones().get("mobilenetv2_100").build(1000, WeightsRequest())
    ours.model.load_state_dict(  # the shipped ImageNet head too, for the logits
        {**ours.model.state_dict(), **{k: v for k, v in read_state_dict(SHIPPED["mobilenetv2_100"][0]).items() if k.startswith("classifier")}}
    )
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(tv.eval()(x), ours.model.eval()(x), atol=1e-5)


@pytest.mark.skipif(not TV_WEIGHTS.is_file(), reason="../shared/weights not present")
def test_local_torchvision_file_loads_by_order_with_sha():
    b = build(file=str(TV_WEIGHTS), sha256=TV_SHA)
    assert b.weights_source == f"file:{TV_WEIGHTS}" and b.weights_sha256 == TV_SHA
    assert torch.equal(b.model.state_dict()["conv_stem.weight"], build().model.state_dict()["conv_stem.weight"])


def test_tampered_file_fails_hash_check(tmp_path):
    path, expected = SHIPPED["mobilenetv2_100"]
    bad = tmp_path / "tampered.safetensors"
    shutil.copy(path, bad)
    data = bytearray(bad.read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="tampered.safetensors has sha256 .* expected 5457"):
        build(file=str(bad), sha256=expected)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "x": Payload()}, evil)
    with pytest.raises(UserError, match="weights_only=True"):
        read_state_dict(evil)


def test_weights_for_another_architecture(tmp_path):
    other = tmp_path / "resnet.pth"
    torch.save(plugins.backbones().get("resnet10t").build(2, WeightsRequest(False)).model.state_dict(), other)
    with pytest.raises(UserError, match="another architecture"):
        build(file=str(other))


@pytest.fixture
def http_server(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "srv"))
    (tmp_path / "srv").mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path / "srv", f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_from_url_into_torch_hub_cache(http_server, tmp_path, monkeypatch):
    served, base = http_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    shutil.copy(SHIPPED["mobilenetv2_100"][0], served / "mnv2.safetensors")
    url = f"{base}/mnv2.safetensors"
    b = build(file=url, sha256=SHIPPED["mobilenetv2_100"][1])
    assert b.weights_source == f"url:{url}"
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / "mnv2.safetensors"
    assert cached.is_file()
    assert torch.equal(b.model.state_dict()["bn1.weight"], build().model.state_dict()["bn1.weight"])
    with pytest.raises(UserError, match="Could not download weights from .*/missing.pth"):
        build(file=f"{base}/missing.pth")
