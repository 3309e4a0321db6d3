"""The H-JEPA training step: model, masks, loss, the step, data and inspection (parameters, FLOPs)."""
