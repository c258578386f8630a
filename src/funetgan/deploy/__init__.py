"""Deployment: ONNX export with its parity check, and the runtime that scores with an exported model."""
