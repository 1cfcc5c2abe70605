"""PyTorch eager runner over an adapter's towers."""

from __future__ import annotations

import numpy as np
import torch

from mfdeploy.models.base import Adapter
from mfdeploy.serve.base import Runner


class TorchRunner(Runner):
    """Eager PyTorch on the CPU (or a given device), float32, no autograd."""

    name = "torch"

    def __init__(self, adapter: Adapter, device: str = "cpu", threads: int | None = None):
        """Wrap the adapter's two towers.

        Args:
            adapter: a loaded model.
            device: torch device to run on.
            threads: intra-op threads; `torch.set_num_threads` is process-wide,
                so this changes it for every torch user in the process.
        """
        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self.vision = adapter.vision_tower().to(device)
        self.text = adapter.text_tower().to(device)

    @torch.inference_mode()
    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(pixel_values, dtype=torch.float32, device=self.device)
        return self.vision(x).float().cpu().numpy()

    @torch.inference_mode()
    def embed_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.as_tensor(input_ids, dtype=torch.int64, device=self.device)
        mask = torch.as_tensor(attention_mask, dtype=torch.int64, device=self.device)
        return self.text(ids, mask).float().cpu().numpy()
