import torch

from cxrlab.config import Config
from cxrlab.data.augment import AugmentSettings, augment, training_batch

OFF = AugmentSettings()


def batch(n=8, size=28):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, size, size), generator=g, dtype=torch.uint8)


def test_all_steps_off_leaves_the_images_unchanged():
    x = batch().unsqueeze(1).float() / 255
    assert torch.equal(augment(x, OFF, torch.Generator().manual_seed(0)), x)


def test_flip_with_probability_one_mirrors_each_image():
    x = batch().unsqueeze(1).float() / 255
    flipped = augment(x, AugmentSettings(hflip=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_default_pipeline_is_seeded_shaped_and_in_range():
    images = batch()
    s = AugmentSettings.from_config(Config(aug_erasing=0.5, aug_perspective=0.3))
    assert s.rotation and s.blur_sigma  # the training recipe's defaults, with every optional step on as well
    a = training_batch(images, s, torch.Generator().manual_seed(1), 0.485, 0.229, "cpu")
    b = training_batch(images, s, torch.Generator().manual_seed(1), 0.485, 0.229, "cpu")
    c = training_batch(images, s, torch.Generator().manual_seed(2), 0.485, 0.229, "cpu")
    assert a.shape == (8, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= (0 - 0.485) / 0.229 - 1e-4 and a.max() <= (1 - 0.485) / 0.229 + 1e-4


def test_rotation_and_blur_change_images_but_keep_their_content():
    x = batch(size=64).unsqueeze(1).float() / 255
    y = augment(x, AugmentSettings(rotation=15, translate=0.05, blur_sigma=(0.1, 0.5)), torch.Generator().manual_seed(0))
    assert not torch.equal(x, y)
    assert (y.mean() - x.mean()).abs() < 0.1  # resampled, not destroyed


def test_erasing_zeroes_a_box_in_normalised_space():
    images = torch.full((16, 28, 28), 255, dtype=torch.uint8)
    out = training_batch(images, AugmentSettings(erasing=1.0), torch.Generator().manual_seed(0), 0.485, 0.229, "cpu")
    erased = (out == 0).flatten(1).sum(1)
    assert (erased > 0).all() and (erased < 28 * 28).all()
