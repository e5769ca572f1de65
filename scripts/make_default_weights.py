"""Convert torchvision's MobileNetV2 ImageNet weights into the safetensors file freezebench ships.

    python scripts/make_default_weights.py ../shared/weights/mobilenet_v2-b0353104.pth

The source must be byte-identical to torchvision's file (sha256 below). Tensors are mapped
in order onto timm ``mobilenetv2_100`` (same 314 tensors, same shapes) and saved under timm's
names; the resulting file's sha256 is printed for ``plugins/timm_backbones.py``.
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

from freezebench.torch_compat import import_timm
from freezebench.weights import match_state_dict, read_state_dict, sha256_file

SOURCE_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
OUT = Path(__file__).resolve().parents[1] / "plugins" / "assets" / "mobilenetv2_100.imagenet.safetensors"


def main(src: str) -> None:
    timm = import_timm()
    model = timm.create_model("mobilenetv2_100", pretrained=False)
    state = match_state_dict(read_state_dict(src, SOURCE_SHA256), model, src)
    model.load_state_dict(state, strict=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(OUT),
              metadata={"source": "torchvision mobilenet_v2 IMAGENET1K_V1", "source_sha256": SOURCE_SHA256})
    print(OUT, sha256_file(OUT))


if __name__ == "__main__":
    main(sys.argv[1])
