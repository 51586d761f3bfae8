"""The served model: a pipeline's ONNX form, the engine that runs it, the export for an image."""
