"""``maskfeat export CHECKPOINT OUT_DIR --hub``: a folder timm loads with ``local-dir:``, and the same outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from test_cli import ROOT, TINY, maskfeat
from test_convert import FIXTURES, needs_fixtures

from maskfeat.checkpoint import write_encoder
from maskfeat.models import create_encoder, load_model, video_encoder_args

TIMM_ALONE = """import sys, timm, torch
from safetensors.torch import load_file, save_file
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
assert not [m for m in sys.modules if m.startswith("maskfeat")]
with torch.no_grad():
    save_file({"y": model(load_file(sys.argv[2])["x"])}, sys.argv[3])
"""


def timm_alone(folder, x: torch.Tensor, tmp_path) -> torch.Tensor:
    """The outputs of ``timm.create_model("local-dir:folder", pretrained=True)`` in a process without maskfeat."""
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    r = subprocess.run([sys.executable, "-c", TIMM_ALONE, str(folder), str(tmp_path / "x.safetensors"),
                        str(tmp_path / "y.safetensors")], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return load_file(str(tmp_path / "y.safetensors"))["y"]


def test_image_encoder_of_a_run_exports_to_a_folder_timm_loads(tmp_path, image_folder):
    run = tmp_path / "run"
    r = maskfeat("pretrain", *TINY, f"data.path={image_folder}", f"output_dir={run}", "train.epochs=1",
                 "data.num_workers=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = load_model(str(run / "encoder.safetensors"))(x)  # (2, 32) pooled features
    for i, source in enumerate((run / "checkpoint-last.pt", run / "encoder.safetensors", run)):
        out = tmp_path / f"hub{i}"
        r = maskfeat("export", str(source), str(out), "--hub")
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        config = json.loads((out / "config.json").read_text())
        assert (config["architecture"], config["num_classes"], config["num_features"]) == (
            "vit_tiny_patch16_224",
            0,
            32,
        )
        p = config["pretrained_cfg"]
        assert p["input_size"] == [3, 32, 32] and p["interpolation"] == "bicubic" and p["license"] == "apache-2.0"
        assert {"mean", "std", "crop_pct"} <= p.keys() and config["model_args"]["depth"] == 1
        card = (out / "README.md").read_text()
        assert card.startswith("---\ntags:\n- image-feature-extraction\n- timm\n")
        assert "library_name: timm\nlicense: apache-2.0\n---\n# Model card for" in card
        assert "`maskfeat pretrain model.name=vit_tiny_patch16_224" in card and "## Metrics" in card
        assert 'timm.create_model("local-dir:' in card
        torch.testing.assert_close(timm_alone(out, x, tmp_path), want)
    # the folder is a checkpoint too, and nothing else may sit in it
    torch.testing.assert_close(load_model(str(tmp_path / "hub0"))(x), want)
    (tmp_path / "hub0" / "extra.safetensors").write_bytes(b"")
    r = maskfeat("export", str(run), str(tmp_path / "hub0"), "--hub")
    assert r.returncode == 2 and "holds other files (extra.safetensors)" in r.stderr


@needs_fixtures
@pytest.mark.parametrize("name", ["vit_image_ft", "mvit_video_ft"])
def test_converted_official_classifier_exports_to_a_folder_timm_loads(tmp_path, name):
    assert maskfeat("convert", str(FIXTURES / f"{name}.pyth"), str(tmp_path / "conv")).returncode == 0
    r = maskfeat("export", str(tmp_path / "conv"), str(tmp_path / "hub"), "--hub", "--license", "cc-by-nc-4.0")
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["num_classes"] == 5 and config["pretrained_cfg"]["license"] == "cc-by-nc-4.0"
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    if name.startswith("vit"):
        logits = timm_alone(tmp_path / "hub", io["x"], tmp_path)
    else:  # a video encoder: timm builds it through maskfeat's registry (imported by this module)
        model = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
        assert "import maskfeat  #" in (tmp_path / "hub" / "README.md").read_text()
        with torch.no_grad():
            logits = model(io["x"])
    err = float((logits - io["logits"]).abs().max())
    assert err <= 1e-4 * float(io["logits"].abs().max())


def test_video_vit_exports_to_a_folder_timm_loads(tmp_path):
    torch.manual_seed(0)
    args = video_encoder_args("vit_s", img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2)
    encoder = create_encoder("vit_s", args).eval()
    write_encoder(str(tmp_path / "enc"), encoder.state_dict(), "vit_s", args, {"input_size": [3, 32, 32]})
    assert maskfeat("export", str(tmp_path / "enc"), str(tmp_path / "hub"), "--hub").returncode == 0
    model = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), encoder(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model("vit_s", pretrained=True)


@pytest.mark.parametrize("imports", ["import maskfeat, timm", "import timm, maskfeat"])
def test_import_maskfeat_gives_timm_the_video_encoders_whichever_comes_first(imports):
    code = (f"{imports}\n"
            "m = timm.create_model('mvit_v2_s', pretrained=False, img_size=64, num_frames=4, num_classes=3)\n"
            "print(type(m).__name__)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["MViTEncoder"]
