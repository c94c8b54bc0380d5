import pytest

from cxrlab.config import Config, load_config
from cxrlab.errors import ConfigError


def test_yaml_values_are_typed_and_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: densenet121\nepochs: 3\nclasses: [Effusion, Pneumothorax]\nlr: 1e-3\n")
    cfg = load_config(path)
    assert cfg.model == "densenet121" and cfg.epochs == 3 and cfg.classes == ["effusion", "pneumothorax"]
    assert cfg.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochz: 3\n", "unknown option"),
        ("epochs: many\n", "epochs = 'many'"),
        ("model: resnet\n", "unknown model 'resnet'"),
        ("size: 32\n", "size 32 is not available"),
        ("classes: [edema, edema]\n", "two different"),
        ("positive_class: hernia\n", "not one of classes"),
        ("- a list\n", "mapping"),
        ("epochs: [1\n", "not valid YAML"),
        ("pos_weight: heavy\n", "pos_weight"),
        ("precision: fp8\n", "precision must be one of fp32, auto, bf16, fp16"),
    ],
)
def test_bad_config_values_are_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_per_model_learning_rates():
    assert Config(model="mobilenet_v3_large").learning_rate == 2e-3
    assert Config(model="efficientnet_b0").learning_rate == 6e-4
    assert Config(model="densenet121").learning_rate == 2e-4


def test_the_shipped_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).parent.parent / "configs" / "example.yaml")
    assert cfg.model == "densenet121" and cfg.threshold == "youden"


def test_the_shipped_study_config_is_valid():
    from pathlib import Path

    from cxrlab.config import Study, from_dict, load_yaml

    values = load_yaml(Path(__file__).parent.parent / "configs" / "study.yaml")
    study = Study(**values.pop("compare")).validate()
    assert study.ensemble == [0.5, 0.3, 0.2] and study.seeds == [0, 1, 2]
    assert from_dict(values).threshold == "sensitivity"


def test_precision_auto_is_fp32_on_a_cpu_and_fp16_off_cuda_is_refused_by_name():
    import torch

    from cxrlab.core.device import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 .*CUDA GPUs, not cpu"):
        resolve_precision("fp16", cpu)


def test_bf16_on_a_gpu_without_native_bf16_is_refused_naming_it_and_auto_takes_fp16(monkeypatch):
    import torch

    from cxrlab.core.device import resolve_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    gpu = torch.device("cuda")
    with pytest.raises(ConfigError, match="Tesla T4 \\(compute capability 7.5\\).*--precision fp16"):
        resolve_precision("bf16", gpu)
    assert resolve_precision("auto", gpu) == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_precision("auto", gpu) == "bf16"
