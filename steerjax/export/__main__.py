"""`python -m steerjax.export`: convert SVs for other tools, import theirs, share on the hub.

  python -m steerjax.export llamacpp SV -o dog.gguf [--lossy] [--model M]
  python -m steerjax.export easysteer SV -o dog            # dog.gguf + dog.json
  python -m steerjax.export lmeval SV -o dog.pt [--lossy]
  python -m steerjax.export import axbench RUN/train -o svs/ --concept all --factor 4
  python -m steerjax.export import {llamacpp,easysteer,lmeval,pyvene} SRC -o dog.safetensors
  python -m steerjax.export push svs/ org/name [--results results/results.json]

SV: a steerjax SV file or a hub name `org/repo/name`. `--model` (alias, HF directory, hub
id or preset) checks width, layer and fingerprint against that model.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from steerjax import checkpoint
from steerjax.export import foreign, formats, hub


def target_config(model: str, data_root: str = ""):
  """The ModelConfig of `model` (a preset, alias, HF directory or hub id, or a llama2.c file)
  without loading HF weights."""
  if not model:
    return None
  from steerjax.models import PRESETS, load
  from steerjax.models.loading import config_from_hf, resolve
  if model in PRESETS:
    return PRESETS[model]
  path = resolve(model, data_root or None)
  if os.path.isdir(path):
    from transformers import AutoConfig
    return config_from_hf(AutoConfig.from_pretrained(path, trust_remote_code=False))
  return load(path)[0].cfg


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m steerjax.export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  def common(p):
    p.add_argument("--model", default="", help="check the SV against this model")
    p.add_argument("--data-root", default="", help="data root for model aliases")

  for name, what in (("llamacpp", "a llama.cpp control vector (.gguf)"),
                     ("easysteer", "an EasySteer GGUF + request JSON (-o takes a prefix)"),
                     ("lmeval", "a steer file for lm-eval's `steered` model (.pt)")):
    p = sub.add_parser(name, help=f"export an SV as {what}")
    p.add_argument("sv", help="SV file or hub org/repo/name")
    p.add_argument("-o", "--out", required=True)
    if name != "easysteer":
      p.add_argument("--lossy", action="store_true",
                     help="export an SV whose positions the tool cannot express")
    common(p)

  p = sub.add_parser("import", help="import an SV from another tool as a steerjax SV file")
  p.add_argument("format", choices=("llamacpp", "easysteer", "lmeval", "axbench", "pyvene"))
  p.add_argument("src", help="file (llamacpp, lmeval), request JSON (easysteer) or folder")
  p.add_argument("-o", "--out", required=True,
                 help="SV file; a folder for axbench --concept all (<concept_id>.safetensors)")
  p.add_argument("--layer", type=int, default=None, help="layer to take (multi-layer files)")
  p.add_argument("--concept", default="0", help="axbench: concept id, name or 'all'; "
                 "pyvene: weight row")
  p.add_argument("--method", default="", help="axbench: which <Method>_weight.pt")
  p.add_argument("--factor", type=float, default=1.0,
                 help="axbench / pyvene: the steering factor to store")
  p.add_argument("--with-bias", action="store_true", help="axbench: add the bias to the factor")
  p.add_argument("--positions", default="", help="axbench (default all-bos) / pyvene "
                 "(default all): the positions the SV was trained on")
  p.add_argument("--key", default="", help="pyvene: the intervention key")
  common(p)

  p = sub.add_parser("push", help="push a folder of SV files to the hub with a model card")
  p.add_argument("folder")
  p.add_argument("repo_id")
  p.add_argument("--repo-type", default="model", choices=("model", "dataset"))
  p.add_argument("--results", default="", help="results.json / summary.json / .csv to show")
  p.add_argument("--private", action="store_true")
  return parser


def _import(args, model_cfg, log):
  kw = dict(model_cfg=model_cfg)
  if args.format == "axbench":
    concepts = ([r.get("concept_id", i) for i, r in enumerate(foreign.axbench_concepts(args.src))]
                if args.concept == "all" else [args.concept])
    if args.concept == "all" and not concepts:
      raise ValueError(f"{args.src}: no metadata.jsonl to list the concepts; pass --concept")
    for concept in concepts:
      sv, meta = foreign.from_axbench(args.src, concept, method=args.method, factor=args.factor,
                                      with_bias=args.with_bias, layer=args.layer,
                                      positions=args.positions or foreign.AXBENCH_POSITIONS, **kw)
      out = args.out
      if args.concept == "all":   # named as steerjax's AxBench jobs name a concept's SV
        concept_id = meta["source"]["concept_id"]
        name = (f"{concept_id:04d}" if isinstance(concept_id, int)
                else re.sub(r"[^A-Za-z0-9_.-]+", "_", str(concept_id)))
        out = os.path.join(args.out, name + ".safetensors")
      _save(out, sv, meta, args.model, log)
    return
  if args.format == "pyvene":
    sv, meta = foreign.from_pyvene(args.src, key=args.key, positions=args.positions or "all",
                                   factor=args.factor, concept=int(args.concept), **kw)
  elif args.format == "llamacpp":
    sv, meta = formats.from_control_vector(args.src, layer=args.layer, **kw)
  elif args.format == "lmeval":
    sv, meta = formats.from_lm_eval(args.src, layer=args.layer, **kw)
  else:
    sv, meta = formats.from_easysteer(args.src, **kw)
  _save(args.out, sv, meta, args.model, log)


def _save(path, sv, meta, model, log):
  if model and not meta.get("model"):
    meta["model"] = model
  checkpoint.save_sv(path, sv, meta)
  log(f"wrote {path} (layer {meta['layer']}, positions {meta['positions']}, "
      f"factor {meta['factor']:.4g})")


def run(argv=None, log=print):
  """Parse `argv` and do it; bad input raises ValueError / FileNotFoundError."""
  args = _parser().parse_args(argv)
  if args.command == "push":
    return hub.push(args.folder, args.repo_id, repo_type=args.repo_type, results=args.results,
                    private=args.private or None, log=log)
  model_cfg = target_config(args.model, args.data_root)
  if args.command == "import":
    return _import(args, model_cfg, log)
  sv, meta = checkpoint.load_sv(args.sv)
  if args.command == "llamacpp":
    out = formats.to_control_vector(sv, meta, args.out, lossy=args.lossy, model_cfg=model_cfg)
  elif args.command == "lmeval":
    out = formats.to_lm_eval(sv, meta, args.out, lossy=args.lossy, model_cfg=model_cfg)
  else:
    out = " and ".join(formats.to_easysteer(sv, meta, args.out, model_cfg=model_cfg))
  if meta.get("positions", "all") != "all" and args.command != "easysteer":
    log(f"note: {args.sv} edits positions {meta['positions']!r}; the export edits every token")
  log(f"wrote {out}")
  return out


def main(argv=None):
  try:
    run(argv)
  except (ValueError, OSError) as err:   # bad input, missing file, no hub: one line
    if os.environ.get("STEERJAX_TRACEBACK"):
      raise
    sys.exit(f"error: {err}")


if __name__ == "__main__":
  main()
