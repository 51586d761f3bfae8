"""A registered graph with a site's recalibration appended, so serving runs it unchanged.

The update ``logit p' = a + b·logit p`` (:mod:`heartml.evidence.recalibration`) becomes a few
nodes after the graph's ``probabilities`` output: take P(disease), compute in float64 with the
same clipping as :func:`heartml.evidence.stats.logit`, apply the update, and give back the
two-column output under its original name and type. Only operators that every opset since 7
has (Gather, Cast, Max, Min, Log, Sub, Mul, Add, Sigmoid, Reshape, Concat), so the graph keeps
its opset.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from heartml.evidence.stats import EPSILON
from heartml.model.onnx_form import OUTPUT_NAME

PREFIX = "heartml_recalibration_"


def recalibrated_graph(graph: bytes, intercept: float, slope: float) -> bytes:
    """``graph`` whose ``probabilities`` are recalibrated by ``intercept`` and ``slope``."""
    model = onnx.load_from_string(graph)
    body = model.graph
    (output,) = [o for o in body.output if o.name == OUTPUT_NAME]
    output_type = output.type.tensor_type.elem_type
    base = PREFIX + "base"
    # Every reader of the old output (an ArgMax for the label, in some graphs) now reads the
    # unrecalibrated probabilities under their new name, as it did before.
    for node in body.node:
        node.output[:] = [base if name == OUTPUT_NAME else name for name in node.output]
        node.input[:] = [base if name == OUTPUT_NAME else name for name in node.input]

    def name(part: str) -> str:
        return PREFIX + part

    constants = {
        "column": np.array(1, dtype=np.int64),
        "low": np.array(EPSILON, dtype=np.float64),
        "high": np.array(1.0 - EPSILON, dtype=np.float64),
        "one": np.array(1.0, dtype=np.float64),
        "intercept": np.array(intercept, dtype=np.float64),
        "slope": np.array(slope, dtype=np.float64),
        "shape": np.array([-1, 1], dtype=np.int64),
    }
    body.initializer.extend(numpy_helper.from_array(v, name(k)) for k, v in constants.items())
    nodes = [
        helper.make_node("Gather", [base, name("column")], [name("p")], axis=1),
        helper.make_node("Cast", [name("p")], [name("p64")], to=TensorProto.DOUBLE),
        helper.make_node("Max", [name("p64"), name("low")], [name("above")]),
        helper.make_node("Min", [name("above"), name("high")], [name("clipped")]),
        helper.make_node("Sub", [name("one"), name("clipped")], [name("complement")]),
        helper.make_node("Log", [name("clipped")], [name("log_p")]),
        helper.make_node("Log", [name("complement")], [name("log_q")]),
        helper.make_node("Sub", [name("log_p"), name("log_q")], [name("logit")]),
        helper.make_node("Mul", [name("logit"), name("slope")], [name("scaled")]),
        helper.make_node("Add", [name("scaled"), name("intercept")], [name("updated_logit")]),
        helper.make_node("Sigmoid", [name("updated_logit")], [name("risk")]),
        helper.make_node("Sub", [name("one"), name("risk")], [name("no_risk")]),
        helper.make_node("Reshape", [name("no_risk"), name("shape")], [name("no_risk_col")]),
        helper.make_node("Reshape", [name("risk"), name("shape")], [name("risk_col")]),
        helper.make_node("Concat", [name("no_risk_col"), name("risk_col")], [name("both")], axis=1),
        helper.make_node("Cast", [name("both")], [OUTPUT_NAME], to=output_type),
    ]
    body.node.extend(nodes)
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized
