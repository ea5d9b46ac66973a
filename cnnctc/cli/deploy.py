"""Commands that deploy a model outside MindSpore: export (ONNX, MindIR, AIR) and quantize (int8)."""
import importlib.util

from .._checks import MAX_CALIBRATION_IMAGES
from ..errors import CnnctcError
from ._args import Command, device_arg, int_at_least


def _onnx_installed():
    """Whether ``import onnx`` can work, found without importing it (or MindSpore)."""
    try:
        return importlib.util.find_spec("onnx") is not None
    except (ImportError, ValueError):
        return False


def export_arguments(p):
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="UID", help="uid of the registered model whose checkpoint to export "
                        "(default: mindspore/1.3/cnnctc_mjstiiit; `cnnctc list` shows all)")
    source.add_argument("--checkpoint", metavar="CKPT", help="checkpoint to export (its alphabet and width "
                        "come along)")
    p.add_argument("--format", choices=("onnx", "mindir", "air"), required=True,
                   help="onnx: opset 13, metadata in the file; mindir/air: description in FILE.json beside it; "
                   "air needs an Ascend device")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, ending with .onnx, .mindir or .air")
    p.add_argument("--batch-size", type=int_at_least(1, 4096), metavar="N",
                   help="fix the batch size (default: any batch)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    device_arg(p)


def export(args):
    from .reading import model_file_problem
    problem = model_file_problem(args.model)
    if problem:
        raise CnnctcError(problem)
    if args.format == "onnx" and not _onnx_installed():  # said before MindSpore loads (seconds), not after
        raise CnnctcError("ONNX export needs the onnx package, which is not installed; pip install 'cnnctc[onnx]'")
    from ..export import export_model
    path = export_model(args.out, format=args.format, checkpoint=args.checkpoint, model=args.model,
                        manifest=getattr(args, "manifest", None), batch_size=args.batch_size,
                        device_target=args.device_target, overwrite=args.overwrite)
    batch = f"batch {args.batch_size}" if args.batch_size else "dynamic batch"
    where = "in its metadata" if args.format == "onnx" else f"in {path.name}.json beside it"
    print(f"{path}: {args.format.upper()}, {batch}; alphabet, preprocessing and source {where}")
    return 0


def quantize_arguments(p):
    p.add_argument("model_file", metavar="MODEL.onnx", help="float ONNX file written by `cnnctc export`")
    p.add_argument("--calib", nargs="+", required=True, metavar="PATH",
                   help="calibration images: files, folders (recursively), globs or LMDBs, like those the model "
                   "will read; unreadable ones are skipped")
    p.add_argument("--out", required=True, metavar="MODEL.int8.onnx", help="int8 file to write")
    p.add_argument("--max-images", type=int_at_least(1, MAX_CALIBRATION_IMAGES, "all are held in memory"),
                   default=256, metavar="N",
                   help="calibration images to use, spread over all given (default 256)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per output "
                   "channel (less accurate; for runtimes without per-channel support)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def quantize(args):
    from ..quantize import quantize_model
    report = quantize_model(args.model_file, args.calib, args.out, max_images=args.max_images,
                            per_channel=not args.per_tensor, overwrite=args.overwrite)
    print(report)
    return 0


COMMANDS = [
    Command("export", "export the model to ONNX (for onnxruntime), MindIR (MindSpore 2.7-2.8) or AIR "
            "(Ascend); the file carries its alphabet and preprocessing, so predict and eval take it as --checkpoint",
            export_arguments, export,
            ("cnnctc export --checkpoint run/best.ckpt --format onnx --out model.onnx",
             "cnnctc export --model mindspore/1.8/cnnctc_mjstiiit --format mindir --out cnnctc18.mindir")),
    Command("quantize", "write a static int8 copy of an exported ONNX model (onnxruntime's QDQ quantizer), "
            "calibrated on your images; prints its agreement with the float model. Check the accuracy cost with "
            "`cnnctc eval --checkpoint MODEL.int8.onnx --data LMDB`", quantize_arguments, quantize,
            ("cnnctc quantize model.onnx --calib train.lmdb --out model.int8.onnx",), uses_manifest=False),
]
