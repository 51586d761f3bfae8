"""The exported model: the ONNX form of a pipeline, the engine that runs it, the export for an image."""
