"""The H-JEPA training step: model, masks, loss, the step, data, inspection (parameters, FLOPs) and
checkpoints (saved and loaded)."""
