"""Write SGLang's /generate protocol, read from a pinned SGLang wheel, into test fixtures.

Usage::

    pip download sglang==0.5.23 --no-deps -d /tmp/sgl
    python scripts/sglang_protocol_fixtures.py /tmp/sgl/sglang-0.5.23-*.whl

The wheel is read as a zip and its sources parsed with :mod:`ast`; sglang is never imported (it
cannot be on CPU machines). Writes, under ``tests/fixtures/sglang/`` (``--out``):

* ``protocol.json``: the SGLang version and the wheel's sha256; the request field names
  (``GenerateReqInput`` in ``srt/managers/io_struct.py``; the JSON contract gate's
  ``GenerateRequest`` in ``api/v1/api_types.py`` with the decoder each field goes through); the
  sampling-param names (the constructor arguments of ``SamplingParams`` in
  ``srt/sampling/sampling_params.py``, split into API and internal fields, and the contract's
  ``SamplingParams`` with its decoders); the finish-reason shapes (``FINISH_*.to_json`` in
  ``srt/managers/schedule_batch.py``); the ``meta_info`` keys the tokenizer manager builds and
  the ``output_token_logprobs`` entry layout; and ``sources``, the file:line of each.
* ``responses/*.json``: ``/generate`` bodies assembled from exactly those shapes (one per
  finish path, plus error bodies), and ``responses/README.md`` naming the source lines of each.

The script fails, naming what changed, when a shape it relies on is missing from the wheel or
the tokenizer manager grows a ``meta_info`` key it has no example value for.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SOURCES = {
    "io_struct": "sglang/srt/managers/io_struct.py",
    "sampling": "sglang/srt/sampling/sampling_params.py",
    "contract": "sglang/api/v1/api_types.py",
    "schedule_batch": "sglang/srt/managers/schedule_batch.py",
    "tokenizer_manager": "sglang/srt/managers/tokenizer_manager.py",
    "weight_versions": "sglang/srt/utils/weight_versions.py",
    "http_server": "sglang/srt/entrypoints/http_server.py",
}
INTERNAL_FIELDS_MARKER = "# --- Internal fields"
"""The comment in ``SamplingParams`` after which fields are internal (set by normalize())."""


class Source:
    """One parsed file of the wheel: its path, text lines and syntax tree."""

    def __init__(self, path: str, text: str) -> None:
        self.path, self.lines, self.tree = path, text.splitlines(), ast.parse(text)

    def at(self, node: ast.AST) -> str:
        return f"{self.path}:{node.lineno}"  # type: ignore[attr-defined]

    def find(self, name: str, kind: type = ast.AST) -> Any:
        """The first class or function called ``name`` anywhere in the file."""
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name and isinstance(node, kind):
                return node
        raise SystemExit(f"{self.path}: no {name!r}; SGLang's source changed, update this script")


def class_fields(cls: ast.ClassDef) -> list[ast.AnnAssign]:
    return [s for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]


def names(nodes: list[ast.AnnAssign]) -> list[str]:
    return [n.target.id for n in nodes]  # type: ignore[union-attr]


def dict_keys(node: ast.Dict) -> list[str]:
    return [str(k.value) for k in node.keys if isinstance(k, ast.Constant)]


def constant_dict(node: ast.Dict) -> dict[str, Any]:
    return {str(k.value): v.value for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}


def assigned_dicts(func: ast.AST, var: str) -> Iterator[ast.Dict]:
    """Every ``var = {...}`` in ``func``, in source order."""
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(isinstance(t, ast.Name) and t.id == var for t in node.targets):
            yield node.value


def subscript_keys(statements: list[ast.stmt], var: str) -> list[str]:
    """Keys of ``var["key"] = ...`` among ``statements`` (not nested ones)."""
    keys = []
    for s in statements:
        if isinstance(s, ast.Assign):
            for t in s.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == var and isinstance(t.slice, ast.Constant):
                    keys.append(str(t.slice.value))
    return keys


def update_keys(func: ast.AST, var: str) -> list[ast.Dict]:
    """The dict literals passed to ``var.update({...})`` in ``func``."""
    return [
        n.args[0] for n in ast.walk(func)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "update"
        and isinstance(n.func.value, ast.Name) and n.func.value.id == var and n.args and isinstance(n.args[0], ast.Dict)
    ]


def decoders(func: ast.FunctionDef) -> dict[str, str]:
    """``{json key: decoder}`` from a generated ``decode_X``: its ``if key == "k": ... elif`` chain."""
    found: dict[str, str] = {}
    for node in ast.walk(func):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "key" and isinstance(test.comparators[0], ast.Constant):
            calls = [c.func.id for c in ast.walk(node.body[0]) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)  # type: ignore[attr-defined]
                     and (c.func.id.startswith("_expect_") or c.func.id.startswith("decode_"))]
            found[str(test.comparators[0].value)] = calls[-1] if calls else "any"
    return found


def sampling_params(src: Source) -> tuple[list[str], list[str], str]:
    """(API args, internal args, source) of the ``SamplingParams`` constructor.

    Older SGLang defines ``__init__``; newer ones are a ``msgspec.Struct`` whose constructor takes
    its fields, the API ones listed above the ``INTERNAL_FIELDS_MARKER`` comment."""
    cls = src.find("SamplingParams", ast.ClassDef)
    init = next((s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    if init is not None:
        return [a.arg for a in init.args.args[1:] + init.args.kwonlyargs], [], src.at(init)
    fields = class_fields(cls)
    marker = next((i + 1 for i in range(cls.lineno, cls.end_lineno or cls.lineno) if src.lines[i - 1].strip().startswith(INTERNAL_FIELDS_MARKER)), None)
    api = [f for f in fields if marker is None or f.lineno < marker]
    return names(api), [n for n in names(fields) if n not in names(api)], src.at(cls)


def finish_reasons(src: Source) -> dict[str, dict[str, Any]]:
    """``{class: {"keys": [...], "type": ..., "source": ...}}`` from each ``FINISH*.to_json``."""
    shapes = {}
    for cls in (n for n in src.tree.body if isinstance(n, ast.ClassDef) and n.name.startswith("FINISH")):
        to_json = next(s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "to_json")
        ret = next(n for n in ast.walk(to_json) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict))
        shapes[cls.name] = {"keys": dict_keys(ret.value), "type": constant_dict(ret.value)["type"], "source": src.at(to_json)}  # type: ignore[arg-type]
    return shapes


def string_default(func: ast.AST, name: str) -> str:
    """The constant in ``x = <name> or "default"`` / ``self.x = <name> or "default"``."""
    for n in ast.walk(func):
        if isinstance(n, ast.BoolOp) and isinstance(n.op, ast.Or) and isinstance(n.values[-1], ast.Constant) and name in ast.unparse(n.values[0]):
            return str(n.values[-1].value)
    raise SystemExit(f"no `{name} or '...'` default found; SGLang's source changed")


def nan_stop(src: Source) -> tuple[str, str]:
    """The string ``FINISH_MATCHED_STR`` reports for an out-of-vocab/NaN token, and where."""
    func = src.find("_check_vocab_boundary_finish", ast.FunctionDef)
    call = next(n for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "FINISH_MATCHED_STR")
    return call.keywords[0].value.value, src.at(call)  # type: ignore[attr-defined]


def meta_info_shapes(tm: Source, wv: Source) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The ``meta_info`` keys of a finished ``/generate`` item, grouped as the tokenizer
    manager adds them, and where each group comes from."""
    batch = tm.find("_handle_batch_output", ast.AsyncFunctionDef)
    base = next(assigned_dicts(batch, "meta_info"))
    counts = update_keys(batch, "meta_info")[0]
    logprob_fn = tm.find("add_logprob_to_meta_info", ast.FunctionDef)
    abort_fn = tm.find("_handle_abort_req", ast.FunctionDef)
    abort_meta = next(d for d in assigned_dicts(abort_fn, "meta_info"))
    abort_finish = next(d for d in assigned_dicts(abort_fn, "finish_reason"))
    spans_fn = wv.find("add_weight_versions_to_meta_info", ast.FunctionDef)
    span_dict = next(n for n in ast.walk(spans_fn) if isinstance(n, ast.Dict))
    finished = [k for n in ast.walk(batch) if isinstance(n, ast.If) for k in subscript_keys(n.body, "meta_info") if k == "e2e_latency"]
    shapes = {
        "base": dict_keys(base), "logprobs": subscript_keys(logprob_fn.body, "meta_info"), "counts": dict_keys(counts),
        "weight_versions": subscript_keys(spans_fn.body, "meta_info"), "weight_version_span": dict_keys(span_dict),
        "finished": finished[:1], "abort_waiting": dict_keys(abort_meta) + subscript_keys(abort_fn.body, "meta_info"),
        "abort_waiting_finish_reason": dict_keys(abort_finish),
    }
    sources = {"base": tm.at(base), "logprobs": tm.at(logprob_fn), "counts": tm.at(counts), "weight_versions": wv.at(spans_fn),
               "abort_waiting": tm.at(abort_fn)}
    return shapes, sources


def logprob_entry(tm: Source) -> tuple[list[str | None], str]:
    """The ``(logprob, token_id, text)`` layout of ``output_token_logprobs`` entries."""
    func = tm.find("detokenize_logprob_tokens", ast.FunctionDef)
    entry = next(n for n in ast.walk(func) if isinstance(n, ast.Tuple) and len(n.elts) == 3)
    return [e.id if isinstance(e, ast.Name) else e.value for e in entry.elts], tm.at(entry)  # type: ignore[attr-defined]


def read_protocol(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as z:
        src = {k: Source(p, z.read(p).decode()) for k, p in SOURCES.items()}
        metadata = next(n for n in z.namelist() if re.fullmatch(r"sglang-[^/]+\.dist-info/METADATA", n))
        version = re.search(r"^Version: (\S+)$", z.read(metadata).decode(), re.MULTILINE).group(1)  # type: ignore[union-attr]
    req = src["io_struct"].find("GenerateReqInput", ast.ClassDef)
    api, internal, sampling_at = sampling_params(src["sampling"])
    contract = src["contract"]
    meta, meta_sources = meta_info_shapes(src["tokenizer_manager"], src["weight_versions"])
    entry, entry_at = logprob_entry(src["tokenizer_manager"])
    nan, nan_at = nan_stop(src["schedule_batch"])
    finish = finish_reasons(src["schedule_batch"])
    abort_init = next(s for s in src["schedule_batch"].find("FINISH_ABORT", ast.ClassDef).body if isinstance(s, ast.FunctionDef))
    output_ids_at = src["schedule_batch"].at(src["schedule_batch"].find("output_ids_through_stop", ast.FunctionDef))
    return {
        "sglang_version": version,
        "wheel": wheel.name,
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "generate_req_input_fields": names(class_fields(req)),
        "sampling_params": api,
        "sampling_params_internal": internal,
        "contract": {
            "generate_request": decoders(contract.find("decode_GenerateRequest", ast.FunctionDef)),
            "sampling_params": decoders(contract.find("decode_SamplingParams", ast.FunctionDef)),
            **{key: names(class_fields(contract.find(cls, ast.ClassDef))) for key, cls in (
                ("generate_response", "GenerateResponse"), ("generate_meta_info", "GenerateMetaInfo"),
                ("logprob_entry", "LogprobEntry"), ("finish_stop", "FinishStop"), ("finish_length", "FinishLength"),
                ("finish_abort", "FinishAbort"), ("weight_version_span", "WeightVersionSpan"), ("error_body", "ErrorBody"))},
        },
        "finish_reasons": finish,
        "abort_message_default": string_default(abort_init, "message"),
        "abort_waiting_message_default": string_default(src["tokenizer_manager"].find("_handle_abort_req", ast.FunctionDef), "abort_message"),
        "nan_stop_string": nan,
        "meta_info": meta,
        "output_token_logprobs_entry": entry,
        "sources": {
            "GenerateReqInput": src["io_struct"].at(req), "SamplingParams": sampling_at,
            "contract.GenerateRequest": contract.at(contract.find("GenerateRequest", ast.ClassDef)),
            "contract.GenerateMetaInfo": contract.at(contract.find("GenerateMetaInfo", ast.ClassDef)),
            "contract.LogprobEntry": contract.at(contract.find("LogprobEntry", ast.ClassDef)),
            **{f"finish_reasons.{k}": v.pop("source") for k, v in finish.items()},
            **{f"meta_info.{k}": v for k, v in meta_sources.items()},
            "output_token_logprobs_entry": entry_at, "nan_stop_string": nan_at, "output_ids_through_stop": output_ids_at,
            "error_response": src["http_server"].at(src["http_server"].find("_create_error_response", ast.FunctionDef)),
            "contract_error_response": src["http_server"].at(src["http_server"].find("generate_request", ast.AsyncFunctionDef)),
        },
    }


# --- /generate bodies assembled from the shapes above -------------------------------------------

RID = "7-0-7f3a9c21:1"  # the rollout runner's "<task>-<sample>-<episode>:<turn>"
PROMPT_TOKENS = 31
EOS = 2  # SmolLM2's <|im_end|>
STOP = "</answer>"


def finish(protocol: dict[str, Any], cls: str, **values: Any) -> dict[str, Any]:
    shape = protocol["finish_reasons"][cls]
    missing = [k for k in shape["keys"] if k != "type" and k not in values]
    if missing:
        raise SystemExit(f"{cls}.to_json has keys {missing} this script gives no value; update it")
    return {k: shape["type"] if k == "type" else values[k] for k in shape["keys"]}


def meta_info(protocol: dict[str, Any], groups: list[str], values: dict[str, Any]) -> dict[str, Any]:
    keys = [k for g in groups for k in protocol["meta_info"][g]]
    missing = sorted(set(keys) - set(values))
    if missing:
        raise SystemExit(f"SGLang's meta_info has keys {missing} this script gives no example value; update it")
    return {k: values[k] for k in keys}


def item(protocol: dict[str, Any], text: str, ids: list[int], logprobs: list[float], finish_reason: dict[str, Any] | None,
         spans: list[tuple[str, int, int]], *, waiting: bool = False) -> dict[str, Any]:
    """One finished /generate item (``{"text", "output_ids", "meta_info"}``), ``return_logprob`` on."""
    layout = protocol["output_token_logprobs_entry"]
    entries = [[{"logprob": lp, "token_id": tok, None: None}[k] for k in layout] for lp, tok in zip(logprobs, ids)]
    span_keys = protocol["meta_info"]["weight_version_span"]
    values = {
        "id": RID, "finish_reason": finish_reason, "prompt_tokens": PROMPT_TOKENS, "num_retractions": 0,
        "input_token_logprobs": [], "output_token_logprobs": entries, "output_token_logprobs_length": len(ids),
        "reasoning_tokens": 0, "completion_tokens": len(ids), "cached_tokens": 24, "e2e_latency": 0.731,
        "weight_versions": [dict(zip(span_keys, span)) for span in spans], "weight_version": spans[-1][0],
    }
    groups = ["abort_waiting", "weight_versions", "logprobs"] if waiting else ["base", "logprobs", "counts", "weight_versions", "finished"]
    body = {"text": text, "output_ids": ids, "meta_info": meta_info(protocol, groups, values)}
    unknown = set(body) - set(protocol["contract"]["generate_response"])
    if unknown:
        raise SystemExit(f"response keys {unknown} are not in the contract's GenerateResponse")
    return body


def responses(protocol: dict[str, Any]) -> list[tuple[str, int, Any, list[str]]]:
    """``(file stem, HTTP status, body, source keys)`` for each fixture response."""
    p, lp = protocol, [-0.25, -1.5, -0.125, -0.5, -2.0, -0.75, -0.0625, -3.0]
    wv = [("3", 0, 0)]
    out_keys = ["meta_info.base", "meta_info.logprobs", "meta_info.counts", "meta_info.weight_versions", "output_token_logprobs_entry", "output_ids_through_stop"]
    answer = [504, 3365, 314, 216, 36, 30]
    fields = list(p["contract"]["sampling_params"])
    return [
        ("stop_token_eos", 200, item(p, "The answer is 4.", answer + [EOS], lp[:7], finish(p, "FINISH_MATCHED_TOKEN", matched=EOS), [("3", 0, 7)]),
         ["finish_reasons.FINISH_MATCHED_TOKEN", *out_keys]),
        ("stop_string", 200, item(p, "<answer>4</answer>", [44, 17056, 46, 36, 1792, 9206, 46], lp[:7], finish(p, "FINISH_MATCHED_STR", matched=STOP),
                                  [("3", 0, 7)]), ["finish_reasons.FINISH_MATCHED_STR", *out_keys]),
        ("length", 200, item(p, "Let me think step by", [4194, 540, 1386, 2611, 411, 216, 36, 30], lp, finish(p, "FINISH_LENGTH", length=8), [("3", 0, 8)]),
         ["finish_reasons.FINISH_LENGTH", *out_keys]),
        ("abort_running", 200, item(p, "The answer", answer[:3], lp[:3], finish(p, "FINISH_ABORT", message=p["abort_message_default"], status_code=None, err_type=None),
                                    [("3", 0, 3)]), ["finish_reasons.FINISH_ABORT", *out_keys]),
        ("abort_waiting", 200, item(p, "", [], [], {k: {"type": "abort", "message": p["abort_waiting_message_default"]}[k] for k in p["meta_info"]["abort_waiting_finish_reason"]},
                                    wv, waiting=True), ["meta_info.abort_waiting", "meta_info.weight_versions"]),
        ("weight_update_mid_request", 200, item(p, "The answer", answer[:4] + [EOS], lp[:5], finish(p, "FINISH_MATCHED_TOKEN", matched=EOS), [("3", 0, 2), ("4", 2, 5)]),
         ["finish_reasons.FINISH_MATCHED_TOKEN", *out_keys]),
        ("stop_nan", 200, item(p, "The", answer[:2] + [EOS], lp[:3], finish(p, "FINISH_MATCHED_STR", matched=p["nan_stop_string"]), [("3", 0, 3)]),
         ["nan_stop_string", *out_keys]),
        ("error_400_context_length", 400, {"error": {"message": "The input (9000 tokens) is longer than the model's context length (8192 tokens)."}},
         ["error_response"]),
        ("error_400_contract", 400, {"error": "unknown field `temprature`, expected one of " + ", ".join(f"`{f}`" for f in fields)},
         ["contract_error_response"]),
    ]


def write(protocol: dict[str, Any], out: Path) -> None:
    (out / "responses").mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps(protocol, indent=1) + "\n")
    rows = []
    for stem, status, body, keys in responses(protocol):
        (out / "responses" / f"{stem}.json").write_text(json.dumps(body, indent=1) + "\n")
        rows.append(f"| `{stem}.json` | {status} | " + "<br>".join(f"{k}: `{protocol['sources'][k]}`" for k in keys) + " |")
    (out / "responses" / "README.md").write_text(README.format(version=protocol["sglang_version"], wheel=protocol["wheel"],
                                                               sha=protocol["wheel_sha256"], rows="\n".join(rows)))


README = """# SGLang-shaped `/generate` responses (generated: do not edit)

Written by `scripts/sglang_protocol_fixtures.py` from the sources of SGLang {version}
(`{wheel}`, sha256 `{sha}`), read with `ast`, never imported. Every key comes from the lines named
below (the finish-reason dicts of `FINISH_*.to_json`, the `meta_info` the tokenizer manager builds,
the `(logprob, token_id, text)` entries of `detokenize_logprob_tokens`); token ids, log-probs and
texts are example values. All were requested with `return_logprob: true`, and `no_stop_trim: true`
for the stop-string case (SGLang trims only `text`, never `output_ids`: those run through the stop).
`protocol.json` beside this folder holds the extracted names and shapes.

| File | HTTP status | Shape from |
|---|---|---|
{rows}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="a downloaded sglang wheel (pip download sglang==X --no-deps)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sglang")
    args = parser.parse_args()
    write(read_protocol(args.wheel), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
