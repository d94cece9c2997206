"""ONNX rewrites a hand-off needs: the contract's normalisation at the graph's input, a Softmax at its output.

The normalisation becomes one per-channel Mul and one Add in front of the first layer: y = x * a + b with
a = 1 / (pixel_scale * std) and b = -mean / std, so the model takes raw 0..255 pixels. Folding it into
the first convolution's weights instead would not be exact: that convolution zero-pads, and a zero-padded
normalised image is a mean-padded raw one, so the border pixels would differ. The Add's output keeps the
old input's name, so every node behind it, and a calibration cache naming it, still apply.

Softmax: nvinfer's classifier parser takes the largest output only when it exceeds both its threshold and
0, so raw logits (all negative, at times) can leave a frame unlabelled; probabilities never do, and the
arg-max, the top-1, is the same. onnx comes in lazily (edgekit.lazy): the device may not have it.
"""

from typing import Any, Dict, Sequence

import numpy as np

from ..artifacts import atomic_path
from ..lazy import lazy_import

RAW_SUFFIX = "_raw"
PROBABILITIES = "probabilities"


def normalisation(contract: Dict[str, Any], pixel_scale: float = 255.0) -> Dict[str, np.ndarray]:
    """The per-channel scale and bias that take raw pixels (0..pixel_scale) to the model's input."""
    mean = np.asarray(contract["mean"], dtype=np.float64)
    std = np.asarray(contract["std"], dtype=np.float64)
    return {"scale": (1.0 / (pixel_scale * std)).astype(np.float32), "bias": (-mean / std).astype(np.float32)}


def _nodes(onnx: Any, input_name: str, raw_name: str, folded: Dict[str, np.ndarray]) -> Sequence[Any]:
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    shape = (1, -1, 1, 1)
    scale = numpy_helper.from_array(folded["scale"].reshape(shape), input_name + "_pixel_scale")
    bias = numpy_helper.from_array(folded["bias"].reshape(shape), input_name + "_pixel_bias")
    scaled = input_name + "_scaled"
    return [scale, bias], [helper.make_node("Mul", [raw_name, scale.name], [scaled], name="handoff_scale"),
                           helper.make_node("Add", [scaled, bias.name], [input_name], name="handoff_bias")]


def rewrite(source: str, destination: str, contract: Dict[str, Any], fold: bool,
            softmax: bool = True) -> Dict[str, Any]:
    """`source` with the contract's normalisation folded in front (`fold`) and a Softmax behind (`softmax`),
    checked by onnx.checker and written atomically to `destination`. Returns the new input and output names."""
    onnx = lazy_import("onnx")
    model = onnx.load(source)
    graph = model.graph
    input_name, output_name = graph.input[0].name, graph.output[0].name
    new_input, new_output = input_name, output_name
    if fold:
        new_input = input_name + RAW_SUFFIX
        initializers, nodes = _nodes(onnx, input_name, new_input, normalisation(contract))
        graph.input[0].name = new_input
        graph.initializer.extend(initializers)
        for node in reversed(nodes):
            graph.node.insert(0, node)
    if softmax:
        new_output = PROBABILITIES
        graph.node.append(onnx.helper.make_node("Softmax", [output_name], [new_output], axis=1,
                                                name="handoff_softmax"))
        graph.output[0].name = new_output
    with atomic_path(destination) as tmp:
        onnx.save(model, tmp)
        onnx.checker.check_model(tmp)
    return {"input": new_input, "output": new_output, "folded": fold, "softmax": softmax}
