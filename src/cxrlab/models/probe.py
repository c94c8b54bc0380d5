"""The model and its feature blocks in one forward pass, for the out-of-distribution check.

Built with torchvision's feature extraction (torch.fx) rather than forward hooks: hooks on a shared model see
every thread's forward pass, so concurrent requests mixed their features; a traced graph has no shared state,
gives the logits and the features from the same pass, and exports to ONNX as one graph.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from cxrlab.models.registry import feature_blocks


class FeatureProbe(nn.Module):
    """forward(x) -> (logits (N, outputs), [per feature block its channel means (N, C)], shallow to deep).
    Shares the model's parameters; built in eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        names = {id(module): name for name, module in model.named_modules()}
        blocks = [names[id(block)] for _, block in feature_blocks(model)]
        output = get_graph_node_names(model)[1][-1]  # the last node of the eval graph: the logits
        self.blocks = len(blocks)
        self.graph = create_feature_extractor(model.eval(), {output: "logit", **{b: f"block{k}" for k, b in enumerate(blocks)}})
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.graph(x)
        return out["logit"], [out[f"block{k}"].float().mean((2, 3)) for k in range(self.blocks)]
