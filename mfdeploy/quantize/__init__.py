"""Quantized towers: ONNX Runtime INT8 for its CPU kernels, ModelOpt QDQ for TensorRT (imported lazily)."""

from mfdeploy.quantize.gate import MIN_COSINE, check_towers, gate_feeds
from mfdeploy.quantize.run import (
    QuantizeConfig,
    quantize_towers,
    resolve_source,
    run_quantize,
    validate,
)

__all__ = [
    "MIN_COSINE",
    "QuantizeConfig",
    "check_towers",
    "gate_feeds",
    "quantize_towers",
    "resolve_source",
    "run_quantize",
    "validate",
]
