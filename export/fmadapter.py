"""Export a trained LoRA to Apple's adapter package (`NAME.fmadapter/`), and read one back.

  python -m export.fmadapter --adapter RUN_DIR --name NAME --out DIR
        [--author A] [--description D] [--license L] [--creator-defined JSON]
        [--allow-stand-in] [--force] [--quiet]
  python -m export.fmadapter inspect PKG [--to-peft OUT] [--force]

Export writes metadata.json and adapter_weights.bin (Core ML blob storage v2) as Apple's toolkit
does. Only a run trained on Apple's base (AFMTextV7ForCausalLM, rank 32) gives a package a device
can load; a stand-in run is refused unless --allow-stand-in, which writes a format-conformance
package marked creatorDefined.standIn = true. `inspect` validates a package, prints a summary
and, with --to-peft, converts it back to a PEFT adapter folder.
See docs/export.md.
"""
from __future__ import annotations

import argparse
import json
import sys

from data.contract.inputs import depth
from export.plan import ExportError
from export.metadata import MAX_METADATA_DEPTH

EPILOG = "Subcommand: python -m export.fmadapter inspect PKG [--to-peft OUT]  (see inspect --help)"


def export_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m export.fmadapter", description=__doc__,
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, metavar="RUN_DIR",
                    help="training run folder: adapter_model.safetensors, adapter_config.json, "
                         "run.json")
    ap.add_argument("--name", required=True,
                    help="adapter name (letters, digits, underscore); the package is NAME.fmadapter")
    ap.add_argument("--out", required=True, metavar="DIR", help="folder to write NAME.fmadapter into")
    ap.add_argument("--author", default="3P developer", help="metadata author (default: %(default)s)")
    ap.add_argument("--description", default="", help="metadata description")
    ap.add_argument("--license", default="", help="metadata license")
    ap.add_argument("--creator-defined", default=None, metavar="JSON",
                    help="extra creatorDefined keys, a JSON object (paths and secrets are dropped)")
    ap.add_argument("--allow-stand-in", action="store_true",
                    help="write a format-conformance package for a stand-in base (never shippable)")
    ap.add_argument("--force", action="store_true", help="replace an existing package")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def inspect_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m export.fmadapter inspect",
        description="Validate a .fmadapter package (inventory, metadata, every blob, the layout) "
                    "and print a summary; exit status 1 when invalid. With --to-peft, also write "
                    "a PEFT adapter folder undoing the export's rotary permutation and scale fold.")
    ap.add_argument("package", metavar="PKG", help="path to NAME.fmadapter")
    ap.add_argument("--to-peft", metavar="OUT", help="write a PEFT adapter folder here")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return ap


def run_export(argv: list[str]) -> int:
    args = export_parser().parse_args(argv)
    from export.package import describe_result, export_adapter

    creator = None
    if args.creator_defined:
        try:
            creator = json.loads(args.creator_defined)
        except json.JSONDecodeError as e:
            raise ExportError(f"--creator-defined: not valid JSON ({e.msg} at column {e.colno})")
        except RecursionError:
            raise ExportError("--creator-defined: nested too deeply") from None
        if depth(creator) > MAX_METADATA_DEPTH - 2:      # it sits two levels down in metadata
            raise ExportError(f"--creator-defined: nested more than {MAX_METADATA_DEPTH - 2} "
                              "levels deep")
        if not isinstance(creator, dict):
            raise ExportError("--creator-defined: must be a JSON object")
    result = export_adapter(args.adapter, args.name, args.out, author=args.author,
                            description=args.description, license=args.license,
                            creator_defined=creator, allow_stand_in=args.allow_stand_in,
                            force=args.force, progress=not args.quiet)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(describe_result(result))
    return 0


def run_inspect(argv: list[str]) -> int:
    args = inspect_parser().parse_args(argv)
    from export.reader import inspect_package, print_report, to_peft

    rep = inspect_package(args.package)
    print_report(rep)
    if not rep.ok:
        return 1
    if args.to_peft:
        out = to_peft(args.package, args.to_peft, force=args.force)
        print(f"wrote PEFT adapter {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "inspect":
            return run_inspect(argv[1:])
        if argv and argv[0] == "export":
            argv = argv[1:]
        return run_export(argv)
    except (ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
