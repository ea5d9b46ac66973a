"""The command line as people expect it: options between paths, choices listed, only the options a
command uses, examples in every --help. In-process: the parser is the point, not MindSpore."""
import pytest

from cnnctc.cli import COMMANDS, build_parser, main


def parse(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def usage_error(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_options_may_come_between_paths():
    args = parse("predict", "a.png", "--checkpoint", "m.onnx", "b.png", "--format", "tsv", "c.png")
    assert args.paths == ["a.png", "b.png", "c.png"] and args.checkpoint == "m.onnx" and args.format == "tsv"
    args = parse("make-lmdb", "images", "--overwrite", "labels.tsv", "out.lmdb")
    assert (args.images_dir, args.labels_file, args.out, args.overwrite) == ("images", "labels.tsv", "out.lmdb", True)
    args = parse("quantize", "--out", "m.int8.onnx", "m.onnx", "--calib", "a", "b")
    assert args.model_file == "m.onnx" and args.calib == ["a", "b"]


def test_device_target_lists_its_choices(capsys):
    line = usage_error(capsys, "predict", "a.png", "--device-target", "TPU")
    assert "'TPU'" in line and "Ascend, GPU, CPU" in line
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert "{Ascend,GPU,CPU}" in capsys.readouterr().out
    assert parse("info", "--device-target", "cpu").device_target == "CPU"  # any case, spelled as MindSpore takes it


@pytest.mark.parametrize("command", ["render OUT", "make-lmdb I L O", "slim A B", "quantize M.onnx --calib x --out y"])
def test_manifest_is_not_offered_where_it_means_nothing(capsys, command):
    name = command.split()[0]
    with pytest.raises(SystemExit):
        main([name, "--help"])
    assert "--manifest" not in capsys.readouterr().out
    assert "--manifest" in usage_error(capsys, *command.split(), "--manifest", "m.json")
    # Before the command it is refused too, instead of being silently ignored.
    assert "means nothing" in usage_error(capsys, "--manifest", "m.json", *command.split())


def test_every_help_ends_with_examples_of_that_command(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command.name, "--help"])
        text = capsys.readouterr().out.rstrip()
        examples = text.split("examples:\n", 1)[1].splitlines()
        assert 1 <= len(examples) <= 2, command.name
        assert all((line + " ").startswith(f"  cnnctc {command.name} ") for line in examples), (command.name, examples)


def test_version(capsys):
    from cnnctc import __version__
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"cnnctc {__version__}"


USAGE_WITHOUT_MINDSPORE = r"""
import sys
from cnnctc.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print(exc.code, "mindspore" in sys.modules)
"""


@pytest.mark.parametrize("bad", [["--output-channel", "24"], ["--lr", "1e308"], ["--workers", "99999"],
                                 ["--alphabet", "aa"]])
def test_a_finetune_usage_error_comes_before_mindspore_is_imported(bad):
    import subprocess
    import sys
    from conftest import subprocess_env
    run = subprocess.run([sys.executable, "-c", USAGE_WITHOUT_MINDSPORE, "finetune", "--train", "x", "--out", "y",
                          *bad], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["2", "False"], run.stderr
    assert f"argument {bad[0]}:" in run.stderr
