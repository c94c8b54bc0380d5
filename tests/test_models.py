import urllib.error

import pytest
import torch
import torchvision

from cxrlab.errors import ConfigError, WeightsError
from cxrlab.models.registry import ARCHITECTURES, count_parameters, create_model, fold_rgb_stem
from cxrlab.models.segmentation import SegmentationPreprocessor


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("size", [28, 64])
def test_forward_gives_one_logit_per_image(name, size):
    model = create_model(name).eval()
    with torch.inference_mode():
        out = model(torch.randn(3, 1, size, size))
    assert out.shape == (3, 1)
    assert count_parameters(model) > 1_000_000


@pytest.mark.parametrize("name, final_map", [("mobilenet_v3_large", 2), ("efficientnet_b0", 2), ("densenet121", 1)])
def test_stem_takes_one_channel_and_keeps_resolution(name, final_map):
    model = create_model(name)
    with torch.no_grad():
        features = model.features(torch.zeros(2, 1, 28, 28))
    assert features.shape[-1] == final_map


def test_pretrained_stem_is_folded_from_a_weights_file(tmp_path):
    reference = torchvision.models.efficientnet_b0()
    path = tmp_path / "effnet.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("efficientnet_b0", pretrained=True, weights_file=str(path))
    assert torch.equal(model.features[0][0].weight, fold_rgb_stem(reference.features[0][0].weight))
    assert model.features[0][0].weight.shape[1] == 1
    assert torch.equal(model.features[1][0].block[0][0].weight, reference.features[1][0].block[0][0].weight)


def test_fold_sums_colour_kernels():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(fold_rgb_stem(w)[:, 0], w[:, 0] + w[:, 1] + w[:, 2])


def test_weights_problems_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="not found"):
        create_model("densenet121", pretrained=True, weights_file=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.efficientnet_b0().state_dict(), wrong)
    with pytest.raises(WeightsError, match="do not fit densenet121"):
        create_model("densenet121", pretrained=True, weights_file=str(wrong))

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError, match="--weights-file"):
        create_model("mobilenet_v3_large", pretrained=True)


def test_unknown_model_is_named():
    with pytest.raises(ConfigError, match="resnet50"):
        create_model("resnet50")


def test_resnet18_is_medmnist_v2s_small_image_resnet():
    """3x3 stride-1 stem, no max-pool, one linear layer as head: 28 px keeps 28x28 through layer1 and ends 4x4."""
    model = create_model("resnet18")
    assert (model.conv1.in_channels, model.conv1.kernel_size, model.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(model.maxpool, torch.nn.Identity) and isinstance(model.fc, torch.nn.Linear)
    sides = []
    hooks = [getattr(model, n).register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1])) for n in ("layer1", "layer4")]
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 1)
    for h in hooks:
        h.remove()
    assert sides == [28, 4]
    # from 128 px torchvision's stem (7x7 stride 2 and the max-pool) comes back, one channel
    big = create_model("resnet18", image_size=128)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.in_channels == 1 and isinstance(big.maxpool, torch.nn.MaxPool2d)


def test_bn_momentum_is_set_on_every_batchnorm_layer():
    norms = lambda m: [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]  # noqa: E731
    assert {n.momentum for n in norms(create_model("mobilenet_v3_large"))} == {0.01}  # torchvision's
    assert {n.momentum for n in norms(create_model("mobilenet_v3_large", bn_momentum=0.1))} == {0.1}


def test_segmentation_preprocessor_zeroes_background_and_dilates():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 4, 4] = 1.0
    x[..., 0, 0] = 0.1  # below the threshold: masked out
    out = SegmentationPreprocessor(threshold=0.2)(x + 5)  # offset: the mask works on min-max normalised input
    assert out[0, 0, 4, 4] == 6 and out[0, 0, 3, 3] == 5  # dilated neighbour kept
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 8, 8] == 0
    model = create_model("mobilenet_v3_large", segmentation=True)
    assert isinstance(model[0], SegmentationPreprocessor)
