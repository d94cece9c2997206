"""Hand-off packages: what an application needs to run a measured model, beside the engine or ONNX.

- `deepstream`: an nvinfer config, its labels file and the model nvinfer runs (deepstream.py);
- `triton`: a model repository, `<name>/config.pbtxt` + `<name>/1/model.plan` or `model.onnx` (triton.py).

Both take the preprocessing contract from summary.json (edgekit.summary.read_preprocessing), never a
retyped mean or std. Device side: Python 3.8, no torch; onnx is imported lazily, only where a graph is
rewritten (graph.py).
"""
