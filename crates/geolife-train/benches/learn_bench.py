"""PyTorch side of the seed-recipe learning benchmark (`learn_bench.sh`): how well the seed's
recipe learns, as test samples-F1, to compare with geolife trained the same way.

The recipe (GLC24.md section 4, the seed's `Trainer(max_epochs=15)`): the seed's fusion network
of `torch_seed_bench.py` (with `--sentinel smoke_convnext` by default), inputs read the seed's
way (environmental CSVs merged on surveyId, inf/NaN -> -1; cubes with nan_to_num; patches
/255 then Normalize(0.5, 0.5)), a random 90/10 train/validation split, BCE with logits, mixup
on 40% of batches with lambda ~ Beta(0.4, 0.4), AdamW lr 8e-4 weight decay 0.01 (constant),
batch 64, 11,255 outputs (column = species id). After each epoch the validation surveys are
scored and the K of the best top-K samples-F1 is fitted (K = 1..k_max). The epoch with the best
validation F1 is kept, as geolife keeps `best.safetensors`; its top-K predictions of the test
surveys are scored against the solution file.

    python3 learn_bench.py --root DATASET --solution SOLUTION.csv --seed 1

Prints one line `RESULT {json}` with the seed, the best epoch, its K, validation and test F1.
"""
import argparse
import copy
import csv
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_seed_bench import Seed, SeedDataset, merged_env  # noqa: E402


def read_labels(path):
    """survey id -> sorted distinct species ids, from the PA train metadata."""
    labels = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            labels.setdefault(int(float(r["surveyId"])), set()).add(int(float(r["speciesId"])))
    return {k: sorted(v) for k, v in labels.items()}


def read_solution(path):
    """survey id -> set of species ids, from a `surveyId,predictions` solution file."""
    sol = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            sol[int(float(r["surveyId"]))] = {int(x) for x in r["predictions"].split()}
    return sol


def samples_f1(top, truth):
    """Mean over surveys of the F1 of a predicted set against the true set (empty -> 0)."""
    total = 0.0
    for pred, true in zip(top, truth):
        hit = len(set(pred) & true)
        total += 2.0 * hit / (len(pred) + len(true)) if pred or true else 0.0
    return total / max(len(truth), 1)


def best_k(scores, truth, k_max):
    """The K in 1..k_max whose top-K has the best samples-F1, and that F1."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k_max]
    best = (1, -1.0)
    for k in range(1, k_max + 1):
        f1 = samples_f1([row[:k].tolist() for row in order], truth)
        if f1 > best[1]:
            best = (k, f1)
    return best


def load_all(root, split, ids, labels, env, classes, workers):
    ds = SeedDataset(root, split, ids, labels, env[0], env[1], classes)
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers)
    return [torch.cat(c) for c in zip(*loader)]


@torch.no_grad()
def score(model, cols, batch):
    model.eval()
    out = []
    for i in range(0, cols[0].shape[0], batch):
        t, l, b, s = (c[i: i + batch] for c in cols[:4])
        out.append(torch.sigmoid(model(t, l, b, s)))
    return torch.cat(out).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--solution", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=11255)
    ap.add_argument("--sentinel", default="smoke_convnext")
    ap.add_argument("--k-max", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    t_start = time.perf_counter()

    labels = read_labels(os.path.join(a.root, "GLC24_PA_metadata_train.csv"))
    train_ids = sorted(labels)
    cols = load_all(a.root, "train", train_ids, labels, merged_env(a.root, "train"), a.classes,
                    a.workers)
    sol = read_solution(a.solution)
    test_ids = sorted(sol)
    test_cols = load_all(a.root, "test", test_ids, {}, merged_env(a.root, "test"), a.classes,
                         a.workers)
    n = len(train_ids)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed))
    n_val = round(0.1 * n)
    val, train = order[:n_val], order[n_val:]
    val_cols = [c[val] for c in cols]
    val_truth = [set(labels[train_ids[i]]) for i in val.tolist()]

    model = Seed(a.classes, sentinel=a.sentinel)
    opt = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.01)
    crit = nn.BCEWithLogitsLoss()
    beta = torch.distributions.Beta(0.4, 0.4)
    best = None
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        shuffled = train[torch.randperm(len(train))]
        loss_sum, steps = 0.0, 0
        for i in range(0, len(shuffled), a.batch_size):
            idx = shuffled[i: i + a.batch_size]
            t, l, b, s, y = (c[idx] for c in cols)
            if torch.rand(1).item() < 0.4:
                lam = beta.sample().item()
                p = torch.randperm(t.shape[0])
                t, l, b, s, y = (lam * x + (1 - lam) * x[p] for x in (t, l, b, s, y))
            opt.zero_grad()
            loss = crit(model(t, l, b, s), y)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            steps += 1
        k, f1 = best_k(score(model, val_cols, 256), val_truth, a.k_max)
        print(f"epoch {epoch}: train loss {loss_sum / steps:.5f}, val F1 {f1:.4f} at K={k} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        if best is None or f1 > best["val_f1"]:
            best = {"epoch": epoch, "k": k, "val_f1": f1, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    test_scores = score(model, test_cols, 256)
    top = np.argsort(-test_scores, axis=1, kind="stable")[:, : best["k"]]
    test_f1 = samples_f1([row.tolist() for row in top], [sol[i] for i in test_ids])
    result = {"tool": "pytorch", "seed": a.seed, "best_epoch": best["epoch"], "k": best["k"],
              "val_f1": round(best["val_f1"], 5), "test_f1": round(test_f1, 5),
              "train": len(train), "val": len(val), "test": len(test_ids),
              "seconds": round(time.perf_counter() - t_start, 1),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
