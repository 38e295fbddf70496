"""PyTorch reference for `geolife bench train`: the seed's fusion network (GLC24.md section 4)
with a torchvision convnext_tiny Sentinel branch at 128x128, trained with the seed's recipe
(BCE with logits, mixup on 40% of batches with lambda ~ Beta(0.4, 0.4), AdamW lr 8e-4 wd 0.01)
on a GLC24-layout dataset (e.g. from `geolife synth`), read the seed's way: a torch Dataset that
per sample looks the survey up in the merged environmental table (a full-column scan, as the
seed's DataFrame filter does), torch.load()s the two .pt cubes and PIL-decodes the RGB and NIR
JPEGs, in a DataLoader with worker processes.

Prints samples/s of full training steps (data loading included, first step excluded as warm-up)
and the extrapolated time of one epoch on 20,000 surveys.

    python3 torch_seed_bench.py --root <DATASET> --steps 6 --batch-size 16 --workers 2

With `--loader-only N` it times only the seed's per-sample Dataset (table scan, two torch.load,
two PIL decodes) over N random samples in one process, the Python counterpart of the raw-file
baseline of `geolife bench data`:

    python3 torch_seed_bench.py --root <DATASET> --loader-only 512 --batch-size 256

The comparisons of the README's speed table (`--sentinel` picks the Sentinel backbone, with
`smoke_convnext` = geolife's smoke ConvNeXt: widths 16..128, one block per stage; `--branches`
keeps a subset of the four branches, e.g. `l` for the Landsat cube ResNet18 alone):

    # one seed-recipe epoch from memory: every sample read once first (not timed), then a
    # training pass over --train-count random surveys and a validation forward over the rest
    python3 torch_seed_bench.py --root <DATASET> --epoch --train-count 2700 --sentinel smoke_convnext --batch-size 64
    # prediction of every test survey, files read by DataLoader workers as the seed does
    python3 torch_seed_bench.py --root <DATASET> --predict --sentinel convnext_base --batch-size 64
"""
import argparse
import csv
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image

ENV = "EnvironmentalRasters/EnvironmentalRasters"
TABLES = [
    ("Climate/Average 1981-2010/GLC24-PA-{s}-bioclimatic.csv", None),
    ("Elevation/GLC24-PA-{s}-elevation.csv", None),
    ("Human Footprint/GLC24-PA-{s}-human_footprint.csv", None),
    ("SoilGrids/GLC24-PA-{s}-soilgrids.csv", None),
    ("LandCover/GLC24-PA-{s}-landcover.csv", None),
]


def read_table(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    sid = header.index("surveyId")
    cols = [i for i in range(len(header)) if i != sid]
    ids = np.array([int(float(r[sid])) for r in rows[1:]], dtype=np.int64)
    vals = np.array(
        [[float(r[i]) if r[i] != "" else np.nan for i in cols] for r in rows[1:]],
        dtype=np.float32,
    )
    return ids, vals


def merged_env(root, split):
    """The seed's merge on surveyId of the five environmental tables (46 columns)."""
    base_ids, parts = None, []
    for rel, _ in TABLES:
        ids, vals = read_table(os.path.join(root, ENV, rel.format(s=split)))
        order = np.argsort(ids)
        ids, vals = ids[order], vals[order]
        if base_ids is None:
            base_ids = ids
        else:
            pos = np.searchsorted(ids, base_ids)
            vals = vals[np.clip(pos, 0, len(ids) - 1)]
        parts.append(vals)
    return base_ids, np.concatenate(parts, axis=1)


def patch_path(root, split, sid, nir=False):
    s = str(sid)
    kind = "NIR" if nir else "RGB"
    sub = "nir" if nir else "rgb"
    cap = split.capitalize()
    parts = [p for p in (s[-2:], s[-4:-2]) if p]
    return os.path.join(root, f"PA_{cap}_SatellitePatches_{kind}", f"pa_{split}_patches_{sub}", *parts, f"{s}.jpeg")


class SeedDataset(torch.utils.data.Dataset):
    def __init__(self, root, split, survey_ids, labels, env_ids, env_vals, num_classes):
        # labels: survey id -> species ids (empty dict for the unlabelled test split)
        self.root, self.split = root, split
        self.ids, self.labels = survey_ids, labels
        self.env_ids, self.env_vals = env_ids, env_vals
        self.num_classes = num_classes
        cubes = os.path.join(root, "TimeSeries-Cubes/TimeSeries-Cubes")
        sep = "-" if split == "train" else "_"
        ls = f"landsat{sep}time{sep}series"
        self.landsat = os.path.join(cubes, f"GLC24-PA-{split}-landsat_time_series", f"GLC24-PA-{split}-{ls}_{{}}_cube.pt")
        self.bioclim = os.path.join(cubes, f"GLC24-PA-{split}-bioclimatic_monthly", f"GLC24-PA-{split}-bioclimatic_monthly_{{}}_cube.pt")

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        sid = self.ids[i]
        row = self.env_vals[self.env_ids == sid][0]  # the seed's per-sample table scan
        tab = torch.from_numpy(np.where(np.isfinite(row), row, -1.0).astype(np.float32))
        ls = torch.nan_to_num(torch.load(self.landsat.format(sid), weights_only=True).float())
        bc = torch.nan_to_num(torch.load(self.bioclim.format(sid), weights_only=True).float())
        rgb = np.asarray(Image.open(patch_path(self.root, self.split, sid)).convert("RGB"), dtype=np.float32)
        nir = np.asarray(Image.open(patch_path(self.root, self.split, sid, True)).convert("L"), dtype=np.float32)
        img = np.concatenate([rgb, nir[:, :, None]], axis=2) / 255.0
        img = (torch.from_numpy(img).permute(2, 0, 1) - 0.5) / 0.5
        y = torch.zeros(self.num_classes)
        y[self.labels.get(sid, [])] = 1.0
        return tab, ls, bc, img, y


def cube_resnet(in_ch):
    m = torchvision.models.resnet18(weights=None)
    m.conv1 = nn.Conv2d(in_ch, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def sentinel_net(kind):
    """A torchvision ConvNeXt with a 4-channel stem and the 1000-way ImageNet head."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    if kind == "smoke_convnext":
        dims = [16, 32, 64, 128]
        m = ConvNeXt([CNBlockConfig(d, n, 1) for d, n in zip(dims, dims[1:] + [None])],
                     stochastic_depth_prob=0.0)
    else:
        m = getattr(torchvision.models, kind)(weights=None)
    stem = m.features[0][0]
    m.features[0][0] = nn.Conv2d(4, stem.out_channels, 4, 4)
    return m


class Seed(nn.Module):
    """The seed's fusion network; `branches` keeps a subset of t(abular), l(andsat),
    b(ioclim), s(entinel), as geolife's `model.use_*` flags do."""

    def __init__(self, num_classes, num_features=46, sentinel="convnext_tiny", branches="tlbs"):
        super().__init__()
        self.branches = branches
        width = 0
        if "t" in branches:
            self.tab_norm = nn.LayerNorm(num_features)
            self.tab_model = nn.Sequential(
                nn.Linear(num_features, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 32))
            self.ln0 = nn.LayerNorm(32)
            width += 32
        if "l" in branches:
            self.landsat_norm = nn.LayerNorm([6, 4, 21])
            self.landsat_model = cube_resnet(6)
            self.ln1 = nn.LayerNorm(1000)
            width += 1000
        if "b" in branches:
            self.bioclim_norm = nn.LayerNorm([4, 19, 12])
            self.bioclim_model = cube_resnet(4)
            self.ln2 = nn.LayerNorm(1000)
            width += 1000
        if "s" in branches:
            self.sentinel_model = sentinel_net(sentinel)
            self.ln3 = nn.LayerNorm(1000)
            width += 1000
        self.fc1 = nn.Linear(width, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(0.15)

    def forward(self, t, l, b, s):
        parts = []
        if "t" in self.branches:
            parts.append(self.dropout(self.ln0(self.tab_model(self.tab_norm(t)))))
        if "l" in self.branches:
            parts.append(self.dropout(self.ln1(self.landsat_model(self.landsat_norm(l)))))
        if "b" in self.branches:
            parts.append(self.dropout(self.ln2(self.bioclim_model(self.bioclim_norm(b)))))
        if "s" in self.branches:
            parts.append(self.dropout(self.ln3(self.sentinel_model(s))))
        x = self.dropout(torch.relu(self.fc1(torch.cat(parts, 1))))
        return self.fc2(x)


def sync(a):
    """Waits for queued GPU work, so wall-clock timers cover it (a no-op on the CPU)."""
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(a, model, opt, crit, scaler, batch):
    """One optimiser step; with --amp as Lightning's `precision=16` trains: the forward and the
    loss under fp16 autocast, the loss scaled by a GradScaler (a step whose gradients overflow
    is skipped and the scale lowered)."""
    t, l, b, s, y = batch
    opt.zero_grad()
    if scaler is None:
        loss = crit(model(t, l, b, s), y)
        loss.backward()
        opt.step()
        return loss
    with torch.autocast(device_type=a.device.split(":")[0], dtype=torch.float16):
        loss = crit(model(t, l, b, s), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


def mixup(batch, beta):
    """The seed's mixup on 40% of batches."""
    t, l, b, s, y = batch
    if torch.rand(1).item() < 0.4:
        lam = beta.sample().item()
        p = torch.randperm(t.shape[0])
        t, l, b, s, y = (lam * x + (1 - lam) * x[p] for x in (t, l, b, s, y))
    return t, l, b, s, y


def run_epoch(a, ds, model, opt, crit, beta, scaler):
    """One seed-recipe epoch from memory: read every sample once (not timed), train on
    --train-count random surveys, then a validation forward (loss) over the rest."""
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=a.workers)
    cols = [torch.cat(c).to(a.device) for c in zip(*loader)]
    load = time.perf_counter() - t0
    n = cols[0].shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(666))
    train, val = order[: a.train_count], order[a.train_count:]
    sync(a)
    t1 = time.perf_counter()
    model.train()
    shuffled = train[torch.randperm(len(train))]
    steps = 0
    for i in range(0, len(shuffled), a.batch_size):
        idx = shuffled[i: i + a.batch_size]
        train_step(a, model, opt, crit, scaler, mixup([c[idx] for c in cols], beta))
        steps += 1
    sync(a)
    t2 = time.perf_counter()
    model.eval()
    vloss = 0.0
    with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=a.amp):
        for i in range(0, len(val), a.batch_size):
            idx = val[i: i + a.batch_size]
            t, l, b, s, y = (c[idx] for c in cols)
            vloss += crit(model(t, l, b, s).float(), y).item() * len(idx)
    sync(a)
    t3 = time.perf_counter()
    print(f"pytorch {torch.__version__} {a.device}{' amp' if a.amp else ''} threads {torch.get_num_threads()}: epoch {t3 - t1:.1f} s "
          f"(train {t2 - t1:.1f} s over {len(train)} surveys in {steps} steps of {a.batch_size}, "
          f"validation {t3 - t2:.1f} s over {len(val)} surveys, val loss {vloss / max(len(val), 1):.5f}); "
          f"reading {n} samples into memory first: {load:.1f} s")


def run_predict(a, model):
    """Scores of every test survey: files read by DataLoader workers, eval forward, sigmoid."""
    ids = []
    with open(os.path.join(a.root, "GLC24_PA_metadata_test.csv"), newline="") as f:
        ids = sorted({int(float(r["surveyId"])) for r in csv.DictReader(f)})
    env_ids, env_vals = merged_env(a.root, "test")
    ds = SeedDataset(a.root, "test", ids, {}, env_ids, env_vals, a.classes)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers)
    model.eval()
    t0 = time.perf_counter()
    n = 0
    with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=a.amp):
        for t, l, b, s, _ in loader:
            t, l, b, s = (x.to(a.device, non_blocking=True) for x in (t, l, b, s))
            torch.sigmoid(model(t, l, b, s).float()).cpu()
            n += t.shape[0]
    sync(a)
    wall = time.perf_counter() - t0
    print(f"pytorch {torch.__version__} {a.device} threads {torch.get_num_threads()}: predict {n} test surveys "
          f"in {wall:.1f} s ({n / wall:.1f} surveys/s, batch {a.batch_size}, {a.workers} workers)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--classes", type=int, default=11255)
    ap.add_argument("--epoch-surveys", type=int, default=20000)
    ap.add_argument("--loader-only", type=int, default=0, metavar="N",
                    help="time only the seed's Dataset over N random samples in this process "
                         "(no model): the baseline of `geolife bench data`")
    ap.add_argument("--sentinel", default="convnext_tiny",
                    choices=["convnext_tiny", "convnext_base", "smoke_convnext"])
    ap.add_argument("--branches", default="tlbs",
                    help="branches kept: any of t, l, b, s (default all four)")
    ap.add_argument("--epoch", action="store_true",
                    help="time one epoch from memory (see the module docs)")
    ap.add_argument("--train-count", type=int, default=0,
                    help="with --epoch: surveys in the training pass (default 90%%)")
    ap.add_argument("--predict", action="store_true",
                    help="time the scoring of every test survey")
    ap.add_argument("--device", default="cpu",
                    help="torch device: cpu (default) or cuda (the GPU baseline of the wgpu build)")
    ap.add_argument("--amp", action="store_true",
                    help="train as the seed does on a GPU (Lightning precision=16): fp16 autocast "
                         "and a GradScaler; predict under fp16 autocast (CUDA only)")
    a = ap.parse_args()
    torch.manual_seed(666)
    labels = {}
    with open(os.path.join(a.root, "GLC24_PA_metadata_train.csv"), newline="") as f:
        for r in csv.DictReader(f):
            labels.setdefault(int(float(r["surveyId"])), set()).add(int(float(r["speciesId"])))
    labels = {k: sorted(v) for k, v in labels.items()}
    env_ids, env_vals = merged_env(a.root, "train")
    ids = sorted(labels)
    ds = SeedDataset(a.root, "train", ids, labels, env_ids, env_vals, a.classes)
    if a.loader_only:
        order = torch.randint(len(ds), (a.loader_only,), generator=torch.Generator().manual_seed(7))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in order.tolist():
            ds[i]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        sps = a.loader_only / wall
        print(f"seed Dataset (python, 1 process): {sps:.0f} samples/s wall = "
              f"{sps / a.batch_size:.2f} batches/s of {a.batch_size}; "
              f"{a.loader_only / cpu / a.batch_size:.2f} batches per CPU-second; {a.loader_only} samples")
        return
    model = Seed(a.classes, env_vals.shape[1], a.sentinel, a.branches).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.01)
    crit = nn.BCEWithLogitsLoss()
    beta = torch.distributions.Beta(0.4, 0.4)
    if a.amp and not a.device.startswith("cuda"):
        ap.error("--amp needs --device cuda (fp16 autocast, as the seed's precision=16)")
    scaler = torch.amp.GradScaler("cuda") if a.amp else None
    if a.predict:
        return run_predict(a, model)
    if a.epoch:
        a.train_count = a.train_count or int(0.9 * len(ds))
        return run_epoch(a, ds, model, opt, crit, beta, scaler)
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers, drop_last=True)
    model.train()
    times, n = [], 0
    it = iter(dl)
    t_prev = time.perf_counter()
    for step in range(a.steps):
        try:
            t, l, b, s, y = next(it)
        except StopIteration:
            it = iter(dl)
            t, l, b, s, y = next(it)
        t, l, b, s, y = (x.to(a.device) for x in (t, l, b, s, y))
        loss = train_step(a, model, opt, crit, scaler, mixup((t, l, b, s, y), beta))
        sync(a)
        now = time.perf_counter()
        dt = now - t_prev
        if step > 0:
            times.append(dt)
            n += t.shape[0]
        t_prev = now
        print(f"step {step}: loss {loss.item():.5f} ({dt:.2f}s)", flush=True)
    sps = n / sum(times)
    print(f"pytorch {torch.__version__} {a.device}{' amp' if a.amp else ''} threads {torch.get_num_threads()}: {sps:.2f} samples/s "
          f"(batch {a.batch_size}, {len(times)} timed steps); one epoch of {a.epoch_surveys} surveys "
          f"~ {a.epoch_surveys / sps / 60:.1f} min (extrapolated)")


if __name__ == "__main__":
    main()
