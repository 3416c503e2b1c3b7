"""Every file starfish writes or reads back: checkpoints, exports (bit-packed, ONNX) and `load`."""
