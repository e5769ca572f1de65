"""What a trained trial's model produces on the test set, for the trial analyses."""

from __future__ import annotations

import torch

from ..records import TrialOutputs
from .device import CPU, Compute


@torch.no_grad()
def collect_trial_outputs(model: torch.nn.Module, head: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          norm, strategy: str, class_names, batch_size: int = 64, compute: Compute = CPU) -> TrialOutputs:
    """Run the trained model on the test set, catching the final linear layer's input."""
    final = head if isinstance(head, torch.nn.Linear) else [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = final.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().flatten(1).float().cpu()))
    model.eval()
    logits = []
    try:
        for start in range(0, len(labels), batch_size):
            batch = compute.layout(norm(compute.batch(images[start : start + batch_size])))
            with compute.autocast():
                logits.append(model(batch).float().cpu())
    finally:
        hook.remove()
    return TrialOutputs(
        strategy=strategy,
        class_names=tuple(class_names),
        labels=labels.numpy(),
        logits=torch.cat(logits).float().numpy(),
        penultimate=torch.cat(captured).float().numpy(),
        head_weight=final.weight.detach().float().cpu().numpy(),
        head_bias=None if final.bias is None else final.bias.detach().float().cpu().numpy(),
    )

