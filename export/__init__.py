"""mitoqp.export: checkpoints to ONNX (needs the train extra: torch, onnx)."""
