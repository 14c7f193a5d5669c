"""Small helpers the training stages share."""
from __future__ import annotations

import time

import numpy as np
import torch


def log(msg: str):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def to_tensor(img) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    return a
