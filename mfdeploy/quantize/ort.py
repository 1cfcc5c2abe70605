"""ONNX Runtime INT8 towers for its CPU kernels (`--target ort`); `onnxruntime.quantization` is imported lazily.

Two schemes, both int8 weights per output channel on the weight MatMuls
(and the patch Conv) chosen by `nodes.plan_nodes`:

- "static": QDQ format, activations uint8 with ranges calibrated on real
  inputs (MinMax). The MatMul outputs stay float (no Q after them): ONNX
  Runtime fuses each DQ-MatMul into one MatMulIntegerToFloat, where a
  quantized output would cost a QLinearMatMul's requantisation plus a
  DequantizeLinear before the float bias Add. The patch Conv keeps its
  quantized output (a float-output Conv is not fused and runs its fp32
  kernel on dequantized weights).
- "dynamic": activations quantized at run time from each batch's own range
  (MatMulInteger); no calibration data is needed.

Why these defaults (measured side by side, `benchmarks/quantize_vitb32.py`,
docs/results/cpu-speed.md): per-channel weights cost nothing in speed and keep
more accuracy than per-tensor; QDQ with quantized MatMul outputs and the
operator format (both QLinearMatMul) ran at the same speed, and QDQ is the
format other runtimes read; leaving the MatMul outputs float made the MoPE
0.5 vision tower 1.18x-1.22x faster again (`benchmarks/quantize_variants.py`); quantizing every op
(LayerNorm, Softmax, Gelu, Add) lowered the bundled model's vision min
cosine from 0.9993 to 0.98.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.tempdirs import owned_tempdir
from mfdeploy.errors import WRITE_ERRNOS, UserError, errno_of, first_line, write_error
from mfdeploy.exporting.external import external_data_files
from mfdeploy.quantize.calib import Feed, feed_reader
from mfdeploy.quantize.nodes import WEIGHT_OPS

SCHEMES = ("static", "dynamic")
# `--scheme auto` (the default): per tower, the scheme that was faster at equal accuracy on ViT-B/32 in
# benchmarks/quantize_vitb32.py on a quiet machine (docs/results/cpu-speed.md has the table and the command).
AUTO_SCHEME = {"vision": "static", "text": "dynamic"}


@contextlib.contextmanager
def quiet(verbose: bool = False):
    """Silence the quantizers' chatter (root-logger warnings, prints) unless `verbose`.

    Either way, the root logger's handlers are as they were afterwards: ONNX Runtime's quantizer logs through
    `logging.info`, which calls `logging.basicConfig()` when the root logger has none, and that handler would
    print every later warning of mfdeploy as `WARNING:mfdeploy.pipelines.build:warning: ...` (in `build --int8`,
    after the quantize stage; in `tune`, after its first INT8 candidate).
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        if verbose:
            yield
            return
        root.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)


def uses_external_data(path: Path) -> bool:
    """Whether an ONNX file keeps any initializer in an external data file."""
    return bool(external_data_files(path))


class _NoDebugDump:
    """`onnx` as ONNX Runtime's symbolic shape inference sees it, minus the debug dump it saves on failure.

    On an incomplete inference it saves the whole model (sym_shape_infer_temp.onnx
    and a <uuid>.data of the weights) into the working directory, the user's. Only
    that module's name `onnx` is replaced, for the call: every other caller of
    `onnx.save_model` and the process's working directory are untouched.
    """

    def __init__(self, onnx_module: Any):
        self._onnx = onnx_module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._onnx, name)

    @staticmethod
    def save_model(*args: Any, **kwargs: Any) -> None:
        return None


@contextlib.contextmanager
def _no_shape_inference_dump():
    import onnxruntime.tools.symbolic_shape_infer as ssi

    real = ssi.onnx
    ssi.onnx = _NoDebugDump(real)
    try:
        yield
    finally:
        ssi.onnx = real


def preprocess(src: Path, dst: Path) -> str:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimisation); returns what ran.

    Symbolic shape inference fails on the text tower's dynamic causal mask; then
    the ONNX shape inference alone runs.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    # a tower stored with external data (over 2 GiB, or exported so) is written the same way: its weights
    # beside it as <name>.data, which the quantizer then reads from the same folder
    external = {"save_as_external_data": True, "all_tensors_to_one_file": True,
                "external_data_location": dst.name + ".data"} if uses_external_data(src) else {}
    with _no_shape_inference_dump():
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False, **external)
            return "symbolic shape inference + optimisation"
        except Exception:  # noqa: BLE001 - ORT raises a bare Exception("Incomplete symbolic shape inference")
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **external)
            return "onnx shape inference + optimisation (symbolic shape inference incomplete)"


# static scheme: which ops' outputs get no QuantizeLinear (see the module docstring)
FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")
STATIC_EXTRA_OPTIONS = {"OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)}


def shapes_from_float(path: Path) -> int:
    """Point every Shape node that reads a Q->DQ copy of a tensor at the float tensor itself.

    The quantizer routes all consumers of a quantized tensor through its
    DequantizeLinear, Shape included, and ONNX Runtime then dequantizes the whole
    tensor only to read its shape (13 such nodes, 4% of the ViT-B/32 INT8 vision
    tower's time). Shape(DQ(Q(t))) is Shape(t), unless t is the output of a quantized node
    (see below). Rewrites `path` in place (the graph
    only: external weights stay where they are); returns how many nodes moved.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}

    def made_by(name: str, op: str):
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    moved = 0
    for node in model.graph.node:
        dq = made_by(node.input[0], "DequantizeLinear") if node.op_type == "Shape" else None
        q = made_by(dq.input[0], "QuantizeLinear") if dq is not None else None
        if q is None:
            continue
        # A quantized node (DQ inputs, Q output: the patch Conv) is fused with its Q only while that Q
        # is its sole consumer, so a Shape never moves onto its output.
        source = producer.get(q.input[0])
        if source is not None and any(made_by(i, "DequantizeLinear") for i in source.input):
            continue
        node.input[0] = q.input[0]
        moved += 1
    if moved:
        onnx.save(model, str(path))
    return moved


def quantize_static_qdq(pre: Path, dst: Path, nodes: list[str], feeds: list[Feed], *, external: bool = False,
                        op_types: tuple[str, ...] = WEIGHT_OPS, extra_options: dict[str, Any] | None = None) -> None:
    """The static scheme on a pre-processed tower: QDQ, int8 weights per channel, uint8 activations
    calibrated on `feeds`, then `shapes_from_float`. `op_types` and `extra_options` (default
    `STATIC_EXTRA_OPTIONS`) are what `benchmarks/quantize_variants.py` varies."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(pre), str(dst), feed_reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                    op_types_to_quantize=list(op_types), use_external_data_format=external,
                    extra_options=dict(STATIC_EXTRA_OPTIONS if extra_options is None else extra_options))
    shapes_from_float(dst)


def quantize_ort(src: Path, dst: Path, nodes: list[str], feeds: list[Feed] | None, scheme: str = "static",
                 verbose: bool = False) -> dict[str, Any]:
    """Write an INT8 copy of the tower `src` to `dst` for ONNX Runtime's CPU provider.

    Args:
        src: fp32 tower.
        dst: output file.
        nodes: names of the nodes to quantize (the rest stays float).
        feeds: calibration inputs (static scheme only).
        scheme: "static" or "dynamic".
        verbose: let the quantizer log.

    Returns:
        What was done: scheme, formats, types, pre-processing.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if scheme not in SCHEMES:
        raise UserError(f"--scheme {scheme}: expected one of {', '.join(SCHEMES)}")
    if scheme == "static" and not feeds:
        raise UserError("static quantization needs calibration pairs (got none)")
    kept: list[str] = []
    with owned_tempdir("mfdeploy-quant-") as tmp:  # model copies: a SIGKILL's are swept by the next run
        pre = Path(tmp) / src.name
        try:
            with quiet(verbose):
                how = preprocess(src, pre)
                external = uses_external_data(src)  # the INT8 tower keeps its weights outside too (dst.data)
                if scheme == "static":
                    quantize_static_qdq(pre, dst, nodes, feeds or [], external=external)
                else:
                    ops = [op for op in WEIGHT_OPS if op != "Conv" or conv_integer_int8()]
                    kept = _unquantized(pre, nodes, ops)
                    quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                                     nodes_to_quantize=nodes, op_types_to_quantize=ops,
                                     use_external_data_format=external)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the quantizer's failures are many and untyped
            if errno_of(e) in WRITE_ERRNOS:  # a full disk, not a quantizer bug: say which file and why
                raise write_error(getattr(e, "filename", None) or dst, e) from None
            raise UserError(f"ONNX Runtime could not quantize {src.name}: {first_line(e)}") from None
    record: dict[str, Any] = {"scheme": scheme, "preprocess": how, "weights": "int8, per output channel, symmetric"}
    if scheme == "static":
        record.update(format="QDQ", activations="uint8, per tensor, asymmetric, MinMax calibration",
                      float_outputs=f"{', '.join(FLOAT_OUTPUT_OPS)} outputs stay float (DQ-MatMul runs as one "
                                    "integer MatMul with a float output)")
    else:
        record.update(format="MatMulInteger (operator)", activations="uint8, per tensor, from each batch's range")
        if kept:  # run.py moves them from the plan's quantized nodes to its float ones
            import onnxruntime

            why = f"ONNX Runtime {onnxruntime.__version__} has no ConvInteger kernel for int8 weights (1.24 has)"
            record["kept_float"] = dict.fromkeys(kept, why)
    return record


@functools.lru_cache(maxsize=1)
def conv_integer_int8() -> bool:
    """Whether this ONNX Runtime's CPU provider runs ConvInteger with int8 weights.

    The dynamic scheme's Conv becomes ConvInteger(uint8 input, int8 weight); ONNX Runtime before 1.24 has a
    kernel for uint8 weights only and refuses such a graph when the session is made, so there the Conv stays
    float. Asked of a one-node graph rather than of the version number.
    """
    import onnxruntime
    from onnx import TensorProto, helper

    node = helper.make_node("ConvInteger", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                              initializer=[helper.make_tensor("w", TensorProto.INT8, [1, 1, 1, 1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # one every runtime this probe asks reads (a newer onnx writes a newer one by default)
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - NOT_IMPLEMENTED, and nothing else is expected of a graph this small
        return False
    return True


def _unquantized(path: Path, nodes: list[str], ops: list[str]) -> list[str]:
    """The nodes of `nodes` whose op is not in `ops` (the quantizer leaves them float)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    wanted = set(nodes)
    return [n.name for n in graph.node if n.name in wanted and n.op_type not in ops]
