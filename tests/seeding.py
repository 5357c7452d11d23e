"""Seeded random generators on the device tests run on (the default device conftest sets)."""

import torch


def generator(seed: int) -> torch.Generator:
    return torch.Generator(torch.get_default_device()).manual_seed(seed)
