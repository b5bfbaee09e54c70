"""Shared test set-up: single-threaded torch (the CI machine has 2 cores) and deterministic seeds."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
