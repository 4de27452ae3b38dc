"""resexport: take a Keras ResNet to the edge (TFLite, ONNX), with proof and numbers."""

__version__ = "0.1.0"
