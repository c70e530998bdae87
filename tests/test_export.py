"""`stopgrad export`: the written files load back into torchvision (strict), timm (strict) and
detectron2's layout (key names, shapes); refusals are one line; nothing is overwritten unasked."""
import pickle
import re

import pytest
import torch
import torchvision
from hypothesis import given, strategies as st
from safetensors.torch import load_file
from torch import nn

from stopgrad.backbones import backbone_for
from stopgrad.config import ConfigError, build_config
from stopgrad.export import detectron2_name, export_backbone
from stopgrad.runs import save_backbone, write_config

timm = pytest.importorskip("timm")


def run_dir(tmp_path, **overrides):
    """A run directory as training leaves it: its config and a (randomly initialised) backbone."""
    cfg = build_config(overrides=overrides)
    channels = 1 if cfg.dataset in ("fashion-mnist", "digits") else 3
    net = backbone_for(cfg, channels)
    folder = tmp_path / "run"
    write_config(folder, cfg, device="cpu")
    save_backbone(folder, net)
    return folder, net.eval()


def rebuilt(result, library):
    """The model the printed statements build (exec'd as written)."""
    scope = {"torchvision": torchvision, "timm": timm, "nn": nn}
    for line in result["load"]:
        exec(line, scope)
    return scope["model"]


def test_a_torchvision_backbone_loads_strictly_into_torchvision(tmp_path):
    folder, net = run_dir(tmp_path, backbone="torchvision:resnet18", dataset="cifar10", small_input=False)
    result = export_backbone(folder, "torchvision", tmp_path / "r18.pt")
    state = torch.load(tmp_path / "r18.pt", weights_only=True)
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    model.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.eval()(x), net(x), atol=1e-6)
    assert result["load"] == ["model = torchvision.models.resnet18()", "model.fc = nn.Identity()"]
    assert result["notes"] == []


@pytest.mark.parametrize("overrides,image", [
    ({"backbone": "torchvision:resnet18", "dataset": "cifar10"}, (3, 32)),  # CIFAR stem: conv1 replaced too
    ({"backbone": "torchvision:mobilenet_v3_small", "dataset": "cifar10"}, (3, 32)),  # classifier[3]
    ({"backbone": "vit-tiny", "dataset": "fashion-mnist"}, (1, 28)),  # VisionTransformer(image_size=28, ...)
    ({"backbone": "resnet18-cifar", "dataset": "cifar10"}, (3, 32)),
    ({"backbone": "resnet50", "dataset": "cifar10"}, (3, 32)),
])
def test_the_printed_statements_build_the_model_the_file_loads_into(tmp_path, overrides, image):
    folder, net = run_dir(tmp_path, **overrides)
    result = export_backbone(folder, "torchvision", tmp_path / "backbone.safetensors")
    model = rebuilt(result, "torchvision")
    model.load_state_dict(load_file(tmp_path / "backbone.safetensors"), strict=True)
    c, side = image
    x = torch.rand(2, c, side, side)
    assert torch.allclose(model.eval()(x.expand(-1, 3, -1, -1) if c == 1 else x).flatten(1), net(x), atol=1e-5)


@pytest.mark.parametrize("overrides,kwargs", [
    ({"backbone": "timm:resnet10t", "dataset": "cifar10"}, {}),
    ({"backbone": "timm:resnet10t", "dataset": "fashion-mnist"}, {"in_chans": 1}),
    ({"backbone": "timm:vit_tiny_patch16_224", "dataset": "cifar10"}, {"img_size": 32, "patch_size": 4}),
])
def test_a_timm_backbone_loads_strictly_into_timm(tmp_path, overrides, kwargs):
    folder, net = run_dir(tmp_path, **overrides)
    result = export_backbone(folder, "timm", tmp_path / "timm.pt")
    model = timm.create_model(overrides["backbone"][5:], num_classes=0, **kwargs)
    model.load_state_dict(torch.load(tmp_path / "timm.pt", weights_only=True), strict=True)
    rebuilt(result, "timm").load_state_dict(torch.load(tmp_path / "timm.pt", weights_only=True), strict=True)
    c = kwargs.get("in_chans", 3)
    x = torch.rand(2, c, 32, 32)
    assert torch.allclose(model.eval()(x), net(x), atol=1e-5)


@pytest.mark.parametrize("backbone,depth,blocks", [("torchvision:resnet18", 18, (2, 2, 2, 2)),
                                                   ("resnet50", 50, (3, 4, 6, 3))])
def test_a_resnet_exports_in_detectron2_s_layout(tmp_path, backbone, depth, blocks):
    folder, net = run_dir(tmp_path, backbone=backbone, dataset="cifar10", small_input=False)
    result = export_backbone(folder, "detectron2", tmp_path / "model.pkl")
    with open(tmp_path / "model.pkl", "rb") as f:
        record = pickle.load(f)
    assert record["matching_heuristics"] is True and isinstance(record["__author__"], str)
    weights = record["model"]
    source = {k: v for k, v in (net.model if hasattr(net, "model") else net).state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert len(weights) == len(source)
    assert all(re.fullmatch(r"stem\.conv1\.(weight|norm\.\w+)|res[2-5]\.\d+\.(conv[123]|shortcut)\.(weight|norm\.\w+)",
                            k) for k in weights), sorted(weights)[:5]
    assert weights["stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert set(weights) >= {"stem.conv1.norm.weight", "stem.conv1.norm.bias", "stem.conv1.norm.running_mean",
                            "stem.conv1.norm.running_var", "res2.0.conv1.weight", "res2.0.conv1.norm.weight",
                            "res3.0.shortcut.weight", "res3.0.shortcut.norm.running_var"}
    for i, n in enumerate(blocks):  # stage i + 2 has n blocks
        assert {int(k.split(".")[1]) for k in weights if k.startswith(f"res{i + 2}.")} == set(range(n))
    assert (weights["res2.0.conv1.norm.running_mean"] == source["layer1.0.bn1.running_mean"].numpy()).all()
    assert f"MODEL.RESNETS.DEPTH {depth}" in result["load"] and "MODEL.RESNETS.STRIDE_IN_1X1 False" in result["load"]
    assert ("MODEL.RESNETS.RES2_OUT_CHANNELS 64" in result["load"]) == (depth < 50)
    assert result["notes"] == []


def test_a_cifar_stem_says_what_detectron2_skips(tmp_path):
    folder, _ = run_dir(tmp_path, backbone="resnet18-cifar", dataset="cifar10")
    result = export_backbone(folder, "detectron2", tmp_path / "model.pkl")
    assert "skips it" in result["notes"][0] and "(64, 3, 3, 3)" in result["notes"][0]


@given(st.lists(st.sampled_from(["conv1.weight", "bn1.weight", "bn1.running_var", "layer1.0.conv1.weight",
                                 "layer1.0.bn1.bias", "layer2.1.bn2.running_mean", "layer3.0.downsample.0.weight",
                                 "layer3.0.downsample.1.weight", "layer4.2.conv3.weight", "layer4.2.bn3.bias"]),
                unique=True))
def test_detectron2_names_keep_keys_apart_and_leave_no_torchvision_names(keys):
    names = [detectron2_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    assert not any(re.search(r"layer\d|bn\d|downsample", n) for n in names)
    assert all(n.startswith(("stem.", "res2.", "res3.", "res4.", "res5.")) for n in names)


@pytest.mark.parametrize("overrides,fmt,message", [
    ({"backbone": "small-cnn"}, "torchvision", "stopgrad's own network"),
    ({"backbone": "timm:resnet10t"}, "torchvision", "with --format timm"),
    ({"backbone": "vit-tiny"}, "timm", "use --format torchvision"),
    ({"backbone": "vit-tiny"}, "detectron2", "exports ResNets"),
])
def test_what_cannot_be_exported_is_refused_in_one_line(tmp_path, overrides, fmt, message):
    folder, _ = run_dir(tmp_path, **overrides)
    out = tmp_path / ("x.pkl" if fmt == "detectron2" else "x.pt")
    with pytest.raises(ConfigError, match=message) as info:
        export_backbone(folder, fmt, out)
    assert "\n" not in str(info.value) and not out.exists()


def test_the_command_line_writes_once_and_replaces_only_with_force(tmp_path, run_cli):
    folder, _ = run_dir(tmp_path, backbone="torchvision:resnet18", dataset="cifar10")
    out = tmp_path / "r18.safetensors"
    code, stdout, err = run_cli("export", str(folder), "--format", "torchvision", "--out", str(out))
    assert code == 0 and out.is_file() and "load it with" in stdout and "strict=True" in stdout
    assert "note: the run used the small-image stem" in stdout
    code, _, err = run_cli("export", str(folder), "--format", "torchvision", "--out", str(out))
    assert code == 2 and "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    code, _, _ = run_cli("export", str(folder), "--format", "torchvision", "--out", str(out), "--force")
    assert code == 0
    code, _, err = run_cli("export", str(folder), "--format", "detectron2", "--out", str(tmp_path / "m.pt"))
    assert code == 2 and ".pkl" in err
    code, _, err = run_cli("export", str(tmp_path), "--format", "timm", "--out", str(tmp_path / "m.pt"))
    assert code == 2 and "not a run directory" in err


def test_a_trained_run_with_a_library_backbone_evaluates_and_exports(tmp_path):
    """The whole path: train (digits, 1x8x8, torchvision ResNet with the CIFAR stem), save, evaluate, export."""
    from stopgrad.evaluate.saved import evaluate_saved
    from stopgrad.train import train
    cfg = build_config(overrides={"dataset": "digits", "backbone": "torchvision:resnet18", "epochs": 1,
                                  "batch_size": 64, "train_subset": 128, "eval_geometry": False, "knn_k": 20,
                                  "threads": 1})
    result = train(cfg, tmp_path / "run", quiet=True, progress=False)
    assert 0 < result["knn_top1"] <= 1
    scores = evaluate_saved("knn", tmp_path / "run", device="cpu", save=False, ks=(20,))["scores"]
    assert abs(scores["20"]["top1"] - result["knn_top1"]) < 1e-6
    out = export_backbone(tmp_path / "run", "detectron2", tmp_path / "r18.pkl")
    assert out["weights"].endswith("backbone.safetensors") and "MODEL.RESNETS.DEPTH 18" in out["load"]
