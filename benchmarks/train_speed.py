"""Training speed: cxrlab's epoch against the bare model step and against the usual way, in one run.

For each model, on the same training images (the binary subset of a ChestMNIST file; phantom by default):

- bare step:   forward, backward and Adam step on pre-made, pre-normalised batches (channels_last); the floor.
- cxrlab:      one real epoch through cxrlab.training.epoch.train_one_epoch (in-memory uint8 tensor, batched
               augmentation on the device, channels_last) plus its validation pass; also the time the batched
               augmentation alone takes, as a share of the epoch.
- usual way:   torchvision per-sample PIL transforms in a Dataset, a DataLoader with worker processes, NCHW
               tensors, validation through a DataLoader under no_grad: how this experiment is usually written.

Prints images/s, the ratios (cxrlab epoch <= 1.15x bare step is the target; usual way / cxrlab is information,
its 2x target retired: see benchmarks/README.md) and the data/augmentation share. Variants are timed in turn,
--repeats rounds, and the median counts; compare ratios, not absolute numbers, across machines.

    .venv/bin/python benchmarks/train_speed.py                       # phantom data, all three models
    .venv/bin/python benchmarks/train_speed.py --data-root ~/.medmnist --models densenet121 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cxrlab.config import MODEL_NAMES, Config
from cxrlab.core.device import autocast, grad_scaler, setup_device
from cxrlab.core.runs import RunDir
from cxrlab.data.augment import AugmentSettings, training_batch
from cxrlab.data.phantom import write_phantom
from cxrlab.data.task import load_task
from cxrlab.models.registry import model_from_config
from cxrlab.training.distributed import Process
from cxrlab.training.epoch import EpochInputs, Learner, train_one_epoch, validation_row


class UsualDataset(Dataset):
    """Per-sample PIL pipeline, as reports of this experiment write it."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, train: bool):
        self.images, self.targets = images, targets
        steps = (
            [
                transforms.RandomRotation(15),
                transforms.RandomAffine(0, translate=(0.1, 0.1)),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(brightness=0.2, contrast=0.2),
                transforms.GaussianBlur(3, sigma=(0.1, 0.5)),
            ]
            if train
            else []
        )
        self.transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize([0.485], [0.229])])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), torch.tensor([float(self.targets[i])])


def bench_model(name: str, data, cfg: Config, device, repeats: int, workers: int) -> dict:
    train, val = data.splits["train"], data.splits["val"]
    n = len(train)
    torch.manual_seed(0)
    model = model_from_config(Config(model=name, size=cfg.size)).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    augmentation = AugmentSettings.from_config(cfg)
    inputs = EpochInputs(train.images, train.targets.float().view(n, -1), augmentation, None, torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            training_batch(train.images[i : i + cfg.batch_size], augmentation, gen, cfg.norm_mean, cfg.norm_std, device).contiguous(
                memory_format=torch.channels_last
            ),
            inputs.targets[i : i + cfg.batch_size],
        )
        for i in range(0, n - n % cfg.batch_size, cfg.batch_size)
    ]

    def bare():
        model.train()
        for x, y in batches:
            with autocast(cfg, device):
                logits = model(x).float()
            loss = F.binary_cross_entropy_with_logits(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    learner = Learner(model, optimizer, None, grad_scaler(cfg, device))
    checkpoint = RunDir(tempfile.mkdtemp()).last_checkpoint  # named in the message of a diverged epoch, never written

    def cxrlab_epoch():
        train_one_epoch(learner, inputs, cfg, 0, device, Process(), False, checkpoint)
        validation_row(model, data, cfg, device)

    def augmentation_only():
        g = torch.Generator().manual_seed(1)
        for i in range(0, n, cfg.batch_size):
            training_batch(train.images[i : i + cfg.batch_size], augmentation, g, cfg.norm_mean, cfg.norm_std, device)

    usual_model = model_from_config(Config(model=name, size=cfg.size)).to(device)  # NCHW
    usual_opt = torch.optim.Adam(usual_model.parameters(), lr=1e-4)
    train_loader = DataLoader(
        UsualDataset(train.images.numpy(), train.targets.numpy(), True),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    val_loader = DataLoader(
        UsualDataset(val.images.numpy(), val.targets.numpy(), False),
        batch_size=cfg.batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
    )

    def usual_epoch():
        usual_model.train()
        for x, y in train_loader:
            loss = F.binary_cross_entropy_with_logits(usual_model(x.to(device)), y.to(device))
            usual_opt.zero_grad()
            loss.backward()
            usual_opt.step()
        usual_model.eval()
        with torch.no_grad():
            for x, y in val_loader:
                F.binary_cross_entropy_with_logits(usual_model(x.to(device)), y.to(device))

    bare()  # warm-up: allocator, oneDNN kernels
    next(iter(train_loader))  # starts the persistent workers, a one-off cost not counted against the usual way
    # interleaved, so that drift in the machine's speed affects every variant alike
    variants = {"bare": bare, "cxrlab": cxrlab_epoch, "aug": augmentation_only, "usual": usual_epoch}
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    t_bare, t_cxrlab, t_aug, t_usual = (statistics.median(times[k]) for k in variants)
    images = len(batches) * cfg.batch_size
    return {
        "model": name,
        "bare_ips": images / t_bare,
        "cxrlab_ips": n / t_cxrlab,
        "usual_ips": n / t_usual,
        "cxrlab_over_bare": t_cxrlab / (t_bare * n / images),
        "usual_over_cxrlab": t_usual / t_cxrlab,
        "augmentation_share": t_aug / t_cxrlab,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help="folder with chestmnist.npz (default: a phantom file with the official counts)")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per variant; the median counts")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="for bare and cxrlab; the usual way stays fp32")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the usual way")
    parser.add_argument("--images", type=int, default=None, help="use only the first N training images (quick look)")
    args = parser.parse_args()

    device = setup_device("cpu")
    root = args.data_root or tempfile.mkdtemp()
    if not args.data_root:
        write_phantom(root, official_counts=True)
    data = load_task(root, 28, ["cardiomegaly", "pneumothorax"])
    if args.images:
        s = data.splits["train"]
        s.images, s.targets = s.images[: args.images], s.targets[: args.images]
    cfg = Config(batch_size=args.batch_size, device="cpu", eval_batch_size=512, precision=args.precision)
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"{'PHANTOM' if data.is_phantom else data.provenance['kind']} data, {len(data.splits['train'])} train / "
        f"{len(data.splits['val'])} val images at 28 px, batch {args.batch_size}, {args.precision}, median of {args.repeats}"
    )
    header = (
        f"{'model':<20}{'bare img/s':>11}{'cxrlab img/s':>13}{'usual img/s':>12}{'cxrlab/bare':>12}{'usual/cxrlab':>13}{'aug share':>10}"
    )
    print(header)
    for name in args.models:
        r = bench_model(name, data, cfg, device, args.repeats, args.workers)
        print(
            f"{r['model']:<20}{r['bare_ips']:>11.0f}{r['cxrlab_ips']:>13.0f}{r['usual_ips']:>12.0f}"
            f"{r['cxrlab_over_bare']:>11.2f}x{r['usual_over_cxrlab']:>12.2f}x{r['augmentation_share']:>10.1%}",
            flush=True,
        )
    print("target: cxrlab/bare <= 1.15x (epoch incl. validation vs bare step); usual/cxrlab is information (its 2x target is retired)")


if __name__ == "__main__":
    main()
