"""The config tree: defaults, file, overrides; one-line errors that name the key."""

from __future__ import annotations

import pytest

from maskfeat.config import RENAMED, ConfigError, load_config, valid_keys


def test_spec_keys_exist():
    keys = set(valid_keys())
    for key in (
        "data.path",
        "data.image_size",
        "data.num_workers",
        "model.name",
        "train.epochs",
        "train.batch_size",
        "train.lr",
        "mask.ratio",
        "output_dir",
        "seed",
        "device",
        "model.checkpoint",
        "data.val_path",
    ):
        assert key in keys, key


def test_layers_merge_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  batch_size: 3\nmask:\n  ratio: 0.5\n")
    cfg = load_config("pretrain", str(f), ["train.epochs=2", "seed=5"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.mask.ratio, cfg.seed) == (2, 3, 0.5, 5)
    assert cfg.output_dir == "runs/pretrain/c"  # the command's own default, one folder per config file
    assert load_config("pretrain", None, []).output_dir == "runs/pretrain"
    assert load_config("pretrain", str(f), ["output_dir=x"]).output_dir == "x"
    assert cfg.train.blr == 2e-4 and cfg.train.clip_grad == 0.02  # the official recipe in code


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epoch=1", "unknown key 'train.epoch'; did you mean train.epochs"),
        ("mask.ration=0.3", "did you mean mask.ratio"),
        ("trian.lr=1", "unknown key 'trian.lr'; did you mean train.lr"),
        ("train.epochs=abc", "invalid value for 'train.epochs'"),
        ("train=3", "'train' is a section"),
        ("data.image_size=100", "not divisible by the patch size 16"),
        ("target.cell_size=6", "not divisible by the HOG cell size target.cell_size=6"),
        ("mask.ratio=1.5", "mask.ratio must be in (0, 1)"),
        ("model.name=resnet50", "model.name 'resnet50' is not a known architecture"),
        ("mask.type=cube", "mask.type must be auto or one of block, random for image models"),
        ("model.name=mvit_v2_s model.depth=2", "model.depth does not apply to MViT"),
        ("data.path=/no/such/folder", "data.path does not exist: /no/such/folder"),
        ("train.amp=fp8", "train.amp must be one of"),
        ("train.strategy=zero3", "train.strategy must be one of ddp, fsdp"),
        ("train.strategy=fsdp train.amp=fp16", "train.strategy=fsdp trains with train.amp=bf16 or off"),
        ("video.repeated_aug=2", "video.repeated_aug applies to video models"),
        ("model.name=vit_s video.repeated_aug=3 train.batch_size=4", "must be a multiple of video.repeated_aug=3"),
        ("model.name=vit_s video.backend=ffmpeg", "video.backend must be one of pyav, torchcodec, auto"),
        ("epochs", "is not of the form key=value"),
    ],
)
def test_bad_overrides_give_one_line_errors_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config("pretrain", None, override.split())
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  nmae: vit_small_patch16_224\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.nmae'; did you mean model.name"):
        load_config("pretrain", str(f), [])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("pretrain", str(tmp_path / "nope.yaml"), [])
    f = tmp_path / "broken.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("pretrain", str(f), [])
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config("pretrain", str(f), [])


def test_shipped_configs_load(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*/*.yaml"))
    assert {f.parent.name for f in files} >= {"pretrain", "finetune", "linprobe"}
    for f in files:
        paths = [f"data.path={tmp_path}", f"data.val_path={tmp_path}", "model.checkpoint=null"]
        cfg = load_config(f.parent.name, str(f), paths)
        assert cfg.data.image_size % 16 == 0, f


def test_only_the_paths_a_command_reads_are_checked(tmp_path):
    missing = str(tmp_path / "nowhere")
    cfg = load_config("evaluate", None, [f"data.path={missing}", f"data.val_path={tmp_path}",
                                         f"model.checkpoint={tmp_path}/x.pt"], check_paths=False)  # fmt: skip
    assert cfg.data.path == missing
    (tmp_path / "x.pt").write_bytes(b"")
    ckpt = f"model.checkpoint={tmp_path}/x.pt"
    load_config("evaluate", None, [f"data.path={missing}", f"data.val_path={tmp_path}", ckpt])  # path: not read
    with pytest.raises(ConfigError, match="data.val_path does not exist"):
        load_config("evaluate", None, [f"data.val_path={missing}", ckpt])
    load_config("pretrain", None, [f"data.val_path={missing}"])  # pre-training reads no evaluation data
    with pytest.raises(ConfigError, match="data.path does not exist"):
        load_config("pretrain", None, [f"data.path={missing}"])


def test_cifar10_configs_read_the_folder_the_prepare_script_writes():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for f in sorted((root / "configs").glob("*/cifar10*.yaml")):
        text = f.read_text()
        assert "shared" not in text, f  # a user's clone has no ../shared
        cfg = load_config(f.parent.name, str(f), [], check_paths=False)
        assert cfg.data.path == "data/cifar10/train", f
        assert cfg.data.val_path in (None, "data/cifar10/test"), f


def test_keys_prints_every_key_with_its_description_as_yaml_that_loads_back_as_the_same_config(tmp_path):
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from maskfeat.config import field_descriptions

    about = field_descriptions()
    assert sorted(about) == sorted(valid_keys())
    assert all(len(text) > 8 for text in about.values()), [k for k, text in about.items() if len(text) <= 8]
    assert about["video.repeated_aug"].endswith("holds batch_size / repeated_aug videos)")  # continuation lines too

    overrides = ["train.epochs=3", "data.crop_scale=[0.2,1.0]", "data.auto_augment=rand-m9-mstd0.5-inc1",
                 "train.lr=0.001", "output_dir='runs/x #1'", "seed=7"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "maskfeat", "finetune", "--keys", *overrides], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    section, described = "", []
    for line in r.stdout.splitlines():
        if line.lstrip().startswith("#"):  # the header, or a description's continuation line
            continue
        if line.endswith(":"):
            section = line[:-1] + "."
            continue
        key = (section if line.startswith(" ") else "") + line.split(":")[0].strip()
        assert line.split("  # ", 1)[1] == about[key][: len(line.split("  # ", 1)[1])], line  # its own description
        described.append(key)
    assert sorted(described) == sorted(valid_keys())  # every key once
    saved = tmp_path / "keys.yaml"
    saved.write_text(r.stdout)
    expected = OmegaConf.to_container(load_config("finetune", None, overrides))
    assert OmegaConf.to_container(load_config("finetune", str(saved))) == expected


def test_amp_off_is_off_in_a_file_and_on_the_command_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  amp: off\n")  # YAML 1.1: a bare off is the boolean false
    assert load_config("pretrain", str(f), []).train.amp == "off"
    assert load_config("pretrain", None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="train.amp must be one of"):
        load_config("pretrain", None, ["train.amp=true"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.optimizer=adam", "train.optimizer must be one of adamw, lars, sgd, got 'adam'"),
        ("target.name=dino", "target.name must be one of hog, pixel, got 'dino'"),
        ("train.resume=always", "train.resume must be one of auto, force, got 'always'"),
        ("mask.type=grid", "mask.type must be one of auto, block, random, cube, tube, frame, got 'grid'"),
        ("train.amp=fp8", "train.amp must be one of auto, bf16, fp16, off, got 'fp8'"),
        ("video.backend=ffmpeg", "video.backend must be one of pyav, torchcodec, auto, got 'ffmpeg'"),
        ("detect.eval_view=wide", "detect.eval_view must be one of center, full, got 'wide'"),
    ],
)
def test_a_value_outside_a_fields_choices_is_one_line_naming_the_key_and_the_choices(override, expected, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("pretrain", None, [override])
    assert str(e.value) == f"command line: {expected}"
    key, value = override.split("=")
    section, name = key.split(".")
    f = tmp_path / "c.yaml"
    f.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config("pretrain", str(f), [])
    assert str(e.value) == f"{f}: {expected}"


def test_choice_fields_compare_as_strings_and_are_saved_as_plain_strings(tmp_path):
    import torch
    from omegaconf import OmegaConf

    from maskfeat.config import to_yaml

    cfg = load_config("linprobe", None, ["train.amp=bf16", "model.name=vit_s", "mask.type=tube", "target.name=pixel"])
    assert (cfg.train.amp, cfg.train.optimizer, cfg.mask.type, cfg.target.name) == ("bf16", "lars", "tube", "pixel")
    assert f"{cfg.train.amp}/{cfg.video.backend}" == "bf16/pyav" and {"bf16": 1}[cfg.train.amp] == 1
    text = to_yaml(cfg)
    assert "  amp: bf16\n" in text and "  optimizer: lars\n" in text and "  type: tube\n" in text
    saved = tmp_path / "config.yaml"
    saved.write_text(text)
    assert OmegaConf.to_container(load_config("linprobe", str(saved))) == OmegaConf.to_container(cfg)
    # what a checkpoint holds: only plain types, so that torch.load(weights_only=True) reads it back
    plain = OmegaConf.to_container(cfg, enum_to_str=True)
    assert type(plain["train"]["amp"]) is str and type(plain["mask"]["type"]) is str
    torch.save({"config": plain}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"] == plain


def test_the_torch_free_name_tables_agree_with_the_models():
    import timm

    from maskfeat.models.mvit import MVIT_SIZES
    from maskfeat.models.names import IMAGE_ARCHITECTURES, VIDEO_ARCHITECTURES
    from maskfeat.models.video_vit import VIDEO_VIT_SIZES

    assert all(timm.is_model(name) for name in IMAGE_ARCHITECTURES)
    assert all(f"patch{size}_" in name for name, size in IMAGE_ARCHITECTURES.items())
    assert [k for k, v in VIDEO_ARCHITECTURES.items() if v == "vit"] == list(VIDEO_VIT_SIZES)
    assert [k for k, v in VIDEO_ARCHITECTURES.items() if v == "mvit"] == list(MVIT_SIZES)
    with pytest.raises(ConfigError, match=r"model.name 'vit_xl' is not a known architecture; choose one of vit_tiny"):
        load_config("pretrain", None, ["model.name=vit_xl"])


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_a_moved_key_is_one_line_naming_its_new_place(old, new, tmp_path):
    with pytest.raises(ConfigError, match=rf"^command line: '{old}' is now '{new}'$"):
        load_config("pretrain", None, [f"{old}=1"])
    section, key = old.split(".")
    (tmp_path / "old.yaml").write_text(f"{section}:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=rf"old.yaml: '{old}' is now '{new}'$"):
        load_config("pretrain", str(tmp_path / "old.yaml"))


def test_saved_configs_of_older_runs_are_read_with_the_moved_keys():
    from maskfeat.builder import make_pretrained_cfg
    from maskfeat.config import upgrade_saved_config

    old = {"data": {"image_size": 64, "num_frames": 8, "frame_stride": 2, "video_backend": "pyav", "path": "x"},
           "model": {"name": "vit_s"}}  # fmt: skip
    new = upgrade_saved_config(old)
    assert new["data"] == {"image_size": 64, "path": "x"}
    assert new["video"] == {"num_frames": 8, "frame_stride": 2, "backend": "pyav"}
    assert old["data"]["num_frames"] == 8  # the caller's dict is left as it was
    pretrained = make_pretrained_cfg(old)
    assert (pretrained["num_frames"], pretrained["frame_stride"], pretrained["input_size"]) == (8, 2, [3, 64, 64])
