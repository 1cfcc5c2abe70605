"""Export an Adapter's vision and text towers to ONNX (`vision.onnx`, `text.onnx`).

The TorchScript exporter (`dynamo=False`) is the default. On these towers it
keeps the requested opset (the dynamo exporter of torch 2.13 emits opset 18
at least and cannot down-convert CLIP's graph to 17), needs no bound on the
text length to make it dynamic, names nodes after their modules
(`/text_model/encoder/layers.0/self_attn/q_proj/MatMul`, which TensorRT's
sparsity log then repeats) and exports in well under a second where dynamo
takes tens of seconds. It exports the graph alone and the weights are
streamed into the file from the module's own tensors (`mfdeploy.exporting.lean`):
peak memory is the loaded model plus one tensor, which is what lets a
ViT-H/14-sized tower export on a 24 GB machine. The graph is cleaned with
onnxscript's optimizer (constant folding, no Identity/Constant clutter,
static embedding width). `exporter="dynamo"` stays available for opset >= 18.

Attention is exported as Hugging Face's "eager" implementation (MatMul, the
mask added, Softmax), whatever the model runs with: the "sdpa" one exports
with a NaN guard after every softmax (IsNaN + Where on each layer's scores)
that CLIP's finite masks never need. Outputs are the same; the ViT-B/32 text
tower runs 7% faster in fp32 and 17% faster in INT8 without it.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mfdeploy._version import __version__
from mfdeploy.artifacts.tempdirs import owned_tempdir
from mfdeploy.errors import WRITE_ERRNOS, MfdeployError, UserError, errno_of, first_line, write_error
from mfdeploy.exporting.lean import graph_only_export, write_model
from mfdeploy.exporting.model_info import (  # noqa: F401 - example_inputs and model_sizes are part of this API
    EXAMPLE_CAPTIONS,
    adapter_specs,
    example_inputs,
    family_metadata,
    model_sizes,
    pruning_metadata,
)
from mfdeploy.exporting.spec import META_PREFIX, MIN_OPSET, check_opset, dynamic_axes

EXPORTERS = ("torchscript", "dynamo")
PROTO_LIMIT = 2**31  # protobuf cannot serialise a message of 2 GiB or more
AUTO_EXTERNAL_BYTES = int(0.9 * PROTO_LIMIT)  # leave room for the graph itself


class ExportError(MfdeployError):
    """The exporter could not turn a tower into a valid ONNX graph."""


def export_towers(adapter, out_dir: Path, opset: int = MIN_OPSET, external_data: bool | None = None,
                  exporter: str = "torchscript") -> dict[str, Any]:
    """Export both towers of `adapter` into `out_dir` as `vision.onnx` and `text.onnx`.

    Args:
        adapter: a loaded `mfdeploy.models.Adapter`.
        out_dir: directory to write into (created if missing).
        opset: ONNX opset, at least 17 so LayerNorm stays one `LayerNormalization` op.
        external_data: store weights in `<tower>.onnx.data`; None decides per tower
            (only when the weights approach protobuf's 2 GiB limit).
        exporter: "torchscript" (default, see the module docstring) or "dynamo".

    Returns:
        A JSON-able record: opset, exporter, model sizes, the family's `conventions` (family name,
        scoring, text padding, text inputs, loss), and per tower its file, spec (the inputs it
        takes), example shapes, external-data flag and a summary of the graph.

    Raises:
        UserError: opset too old, or an unknown exporter.
        ExportError: torch or ONNX rejected the graph.
    """
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    check_opset(opset, exporter)
    if exporter == "dynamo" and opset < 18:
        raise UserError("the dynamo exporter emits opset 18 or newer: pass opset >= 18 or use the torchscript exporter")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = model_sizes(adapter)
    specs = adapter_specs(adapter, sizes)
    examples = example_inputs(adapter)
    modules = {"vision": adapter.vision_tower(), "text": adapter.text_tower()}
    family = family_metadata(adapter)
    record: dict[str, Any] = {"opset": opset, "exporter": exporter, "model": sizes, "towers": {},
                              "conventions": adapter.family.conventions()}
    with eager_attention(getattr(adapter, "model", None)) as attention:
        record["attention"] = attention
        for tower, module in modules.items():
            meta = {"tower": tower, "model_id": adapter.model_id, "mfdeploy_version": __version__, **family,
                    **pruning_metadata(adapter), **{k: str(v) for k, v in sizes.items()}}
            record["towers"][tower] = export_tower(
                module, tower, specs[tower], examples[tower], out_dir / specs[tower]["file"], opset=opset,
                external_data=external_data, exporter=exporter, max_text_len=sizes["max_text_len"], metadata=meta)
    return record


@contextlib.contextmanager
def eager_attention(model: Any):
    """Run `model`'s attention as Hugging Face's "eager" implementation inside the block (see the module
    docstring); yields the implementation the export saw. The model's own setting is restored after.

    `model` is a transformers model (None, or one without `set_attn_implementation`: nothing to set).
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield current or "the model's own"
        return
    model.set_attn_implementation("eager")
    try:
        yield "eager"
    finally:
        model.set_attn_implementation(current)


def export_tower(module: nn.Module, tower: str, spec: dict[str, Any], example: dict[str, torch.Tensor], path: Path,
                 opset: int, external_data: bool | None, exporter: str, max_text_len: int,
                 metadata: dict[str, str]) -> dict[str, Any]:
    """Export one tower module to `path` following `spec` (see `mfdeploy.exporting.spec`).

    The TorchScript exporter writes the graph alone (`export_params=False`, see
    `mfdeploy.exporting.lean.graph_only_export`) and `lean.write_model` streams the module's own
    tensors into the file: besides the loaded model, one tensor at a time is
    copied. The dynamo exporter (and a graph whose weights cannot be named)
    goes through torch's own file, which holds the weights several times over.
    """
    import onnx

    module = float32_tower(module).eval()
    n_bytes = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    use_external = n_bytes > AUTO_EXTERNAL_BYTES if external_data is None else bool(external_data)
    data_file = path.with_name(path.name + ".data")
    props = {META_PREFIX + k: v for k, v in metadata.items()}
    lean = None
    try:
        if exporter == "torchscript":
            lean = graph_only_export(module, spec, example, opset)
        if lean is None:
            model = _torch_file_export(module, spec, example, path, opset, exporter, max_text_len)
    except Exception as e:  # torch raises many types here; the user needs one line
        if errno_of(e) in WRITE_ERRNOS:  # a full disk, not an export bug: say which file and why
            raise write_error(getattr(e, "filename", None) or path, e) from None
        raise ExportError(f"ONNX export of the {tower} tower failed: {first_line(e)}") from e
    if lean is not None:
        graph, tensors = lean
        graph = _optimize(graph)
        weights = {i.name for i in graph.graph.input if i.name in tensors}
        inputs = [i for i in graph.graph.input if i.name not in weights]
        _check_io(tower, spec, [i.name for i in inputs], [o.name for o in graph.graph.output])
        info = inspect_graph(graph)  # weights are still typed graph inputs here: no data needed
        del graph.graph.input[:]
        graph.graph.input.extend(inputs)
        onnx.helper.set_model_props(graph, props)
        written = write_model(graph, [(n, t) for n, t in tensors.items() if n in weights], path,
                              external=use_external)
        if written is None and path.stat().st_size >= PROTO_LIMIT:
            path.unlink()
            raise UserError(f"{tower} tower is too large for one ONNX file ({n_bytes} bytes of weights): "
                            "use --external-data")
        use_external = written is not None
    else:
        _check_io(tower, spec, [i.name for i in model.graph.input], [o.name for o in model.graph.output])
        onnx.helper.set_model_props(model, props)
        for stale in (path, data_file):
            stale.unlink(missing_ok=True)
        try:
            onnx.save_model(model, str(path), save_as_external_data=use_external, all_tensors_to_one_file=True,
                            location=data_file.name, size_threshold=1024)
        except ValueError as e:  # protobuf refuses messages >= 2 GiB
            raise UserError(f"{tower} tower is too large for one ONNX file ({first_line(e)}): "
                            "use --external-data") from None
        del model
        info = inspect_graph(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)  # by path: works with external data and > 2 GiB
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path.name} fails the ONNX checker: {first_line(e)}") from None
    return {"file": path.name, "data_file": data_file.name if use_external else None, "external_data": use_external,
            "inputs": spec["inputs"], "outputs": spec["outputs"],
            # the inputs the graph takes (SigLIP's text tower: no attention_mask)
            "example_shapes": {k: list(v.shape) for k, v in example.items() if k in spec["inputs"]}, "graph": info,
            "writer": "streamed" if lean is not None else "torch"}


def _check_io(tower: str, spec: dict[str, Any], inputs: list[str], outputs: list[str]) -> None:
    if (inputs, outputs) != (list(spec["inputs"]), list(spec["outputs"])):
        raise ExportError(f"{tower} tower exported with inputs/outputs {(inputs, outputs)}, expected "
                          f"{list(spec['inputs'])} -> {list(spec['outputs'])}")


def _torch_file_export(module: nn.Module, spec: dict[str, Any], example: dict[str, torch.Tensor], path: Path,
                       opset: int, exporter: str, max_text_len: int):
    """torch writes the file with its weights; returns it loaded and optimised."""
    import onnx

    with owned_tempdir(".raw-", path.parent) as raw_dir:
        raw = Path(raw_dir) / path.name
        _torch_export(module, spec, example, raw, opset, exporter, max_text_len)
        model = onnx.load(str(raw))  # also pulls in any external data torch wrote for a large model
    return _optimize(model)


def float32_tower(module: nn.Module) -> nn.Module:
    """The tower in float32, as the spec requires: itself, or a float32 copy of a half-precision one.

    A copy, not an in-place `.float()`: the towers share their weights with the adapter's model.
    """
    if all(p.dtype == torch.float32 for p in module.parameters()):
        return module
    return copy.deepcopy(module).float()


def _torch_export(module: nn.Module, spec: dict[str, Any], example: dict[str, torch.Tensor], path: Path,
                  opset: int, exporter: str, max_text_len: int) -> None:
    args = tuple(example[name] for name in spec["inputs"])
    common: dict[str, Any] = dict(input_names=list(spec["inputs"]), output_names=list(spec["outputs"]),
                                  opset_version=opset)
    # Tracer and deprecation warnings come from Python-side checks in transformers; the parity
    # check on other batch sizes and text lengths is what proves the graph general.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(path), dynamo=False, dynamic_axes=dynamic_axes(spec),
                              do_constant_folding=True, **common)
        else:
            from torch.export import Dim

            dims = {"batch": Dim("batch", min=1, max=4096), "text_len": Dim("text_len", min=1, max=max_text_len)}
            shapes = {name: {i: dims[d] for i, d in enumerate(t["shape"]) if isinstance(d, str)}
                      for name, t in spec["inputs"].items()}
            torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=shapes, external_data=True,
                              **common)


def _optimize(model):
    """Constant-fold and tidy the graph; the unoptimised graph is kept if the optimiser fails."""
    try:
        import onnxscript.optimizer

        return onnxscript.optimizer.optimize(model)
    except Exception as e:  # an optimiser bug must not cost the user a valid export
        warnings.warn(f"onnxscript optimizer failed ({first_line(e)}); keeping the unoptimised graph", stacklevel=2)
        return model


def inspect_graph(source: Path | Any) -> dict[str, Any]:
    """What the export checks care about: op counts, opset, and the input dtype of every ArgMax.

    `source` is an ONNX file (external data is not loaded) or a ModelProto,
    such as a graph whose weights are still typed inputs.
    """
    import onnx

    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    dtypes.update({t.name: t.data_type for t in g.initializer})
    ops = Counter(n.op_type for n in g.node)
    argmax = [{"node": n.name, "input_dtype": onnx.TensorProto.DataType.Name(dtypes.get(n.input[0], 0)).lower()}
              for n in g.node if n.op_type == "ArgMax"]
    return {"opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
            "nodes": len(g.node), "ops": dict(sorted(ops.items())), "argmax": argmax}
