#!/usr/bin/env python3
"""PyTorch twin of examples/bench_step.rs: one training step (forward + BCE-with-logits backward +
AdamW) on CPU for the seed's cube ResNet18 (batch 64, 6x4x21) and the fusion model with
convnext_tiny (batch 16, 4x128x128). Usage: python3 bench_step.py [steps] [threads]"""
import os
import sys
import time

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
from gen_cnn import SeedEnsemble, cube_resnet18  # noqa: E402


def bench(name, model, inputs, target, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.01)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"{name}: {(time.perf_counter() - t) / steps:.3f} s/step ({steps} steps)")


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    if len(sys.argv) > 2:
        torch.set_num_threads(int(sys.argv[2]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench("cube resnet18 b64", cube_resnet18(6), [torch.randn(64, 6, 4, 21)],
          torch.full((64, 1000), 0.01), steps)
    sentinel = torchvision.models.convnext_tiny(weights=None)
    sentinel.features[0][0] = nn.Conv2d(4, 96, kernel_size=4, stride=4)
    model = SeedEnsemble(11255, 46, sentinel)
    b = 16
    inputs = [torch.randn(b, 46), torch.randn(b, 6, 4, 21), torch.randn(b, 4, 19, 12),
              torch.randn(b, 4, 128, 128)]
    bench("fusion convnext_tiny b16", model, inputs, torch.full((b, 11255), 0.001), steps)


if __name__ == "__main__":
    main()
