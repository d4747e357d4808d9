"""The champion in ONNX (FP32, INT8), its release gates, and the inference benchmark of every variant."""
