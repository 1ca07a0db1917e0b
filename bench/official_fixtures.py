"""How close the converted official checkpoints come to the official outputs: each fixture of
../shared/fixtures/slowfast (written by facebookresearch/SlowFast itself, see its README) converted with
``maskfeat.convert``, run on the fixture's input and mask, and compared with the outputs SlowFast computed.

    python bench/official_fixtures.py [--fixtures ../shared/fixtures/slowfast]

Prints, per fixture and output, max |ours - official| / max |official| (the tests require <= 1e-4), and the
parameter counts against MANIFEST.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from maskfeat.convert import build_converted, convert


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def outputs(name: str, folder: Path) -> dict[str, float]:
    model = build_converted(*convert(str(folder / f"{name}.pyth")))
    io = load_file(str(folder / f"{name}.io.safetensors"))
    with torch.no_grad():
        if "mask" in io:
            loss, pred, target = model(io["x"], io["mask"])
            mask = io["mask"]
            pairs = {"pred (masked)": (pred[mask], io["pred_masked"]), "target (masked)": (target[mask],
                     io["target_masked"]), "loss": (loss, io["loss"])}  # fmt: skip
        else:
            pairs = {"logits": (model(io["x"]), io["logits"])}
    errors = {k: relative_error(a, b) for k, a, b in ((k, *v) for k, v in pairs.items())}
    errors["parameters"] = sum(p.numel() for p in model.parameters())
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "fixtures" /
                    "slowfast")  # fmt: skip
    args = ap.parse_args()
    manifest = json.loads((args.fixtures / "MANIFEST.json").read_text())["fixtures"]
    for name in sorted(manifest):
        errors = outputs(name, args.fixtures)
        n = errors.pop("parameters")
        shown = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        print(f"{name}: {shown}; parameters {n:,} (official {manifest[name]['parameters']:,})")


if __name__ == "__main__":
    main()
