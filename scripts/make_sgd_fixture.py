#!/usr/bin/env python3
"""Reference values for tests/tests/linear_eval.rs: three steps of torch.optim.SGD (Nesterov 0.9,
weight decay 0.01, lr 0.1 then 0.05 then 0.02) on a 2x3 weight with fixed gradients.
Run with the PyTorch venv (scripts/peer-python); prints the weights after each step."""
import torch

w = torch.nn.Parameter(torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.25, -0.75]]))
grads = [
    torch.tensor([[0.1, 0.2, -0.3], [0.4, -0.5, 0.6]]),
    torch.tensor([[-0.2, 0.1, 0.0], [0.3, 0.3, -0.1]]),
    torch.tensor([[0.05, -0.05, 0.5], [-0.4, 0.2, 0.2]]),
]
opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
for lr, g in zip([0.1, 0.05, 0.02], grads):
    for group in opt.param_groups:
        group["lr"] = lr
    w.grad = g.clone()
    opt.step()
    print([round(v, 9) for v in w.detach().flatten().tolist()])
