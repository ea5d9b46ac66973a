"""The error contract at the extremes (issue 14): huge files, out of memory, streams that cannot
be written, an environment without a home, odd alphabets, hostile side files, wrong argument
types, and a hub entry point that leaves the user's MindSpore alone.

CLI cases run in-process on a tiny ONNX model (no MindSpore) where the point is the CLI's own
behaviour; a real process only where the process boundary is the point (a closed stdout, a uid
without a passwd entry, a memory limit, MindSpore's context).
"""
import hashlib
import io
import json
import os
import resource
import stat
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from conftest import subprocess_env, write_manifest
from cnnctc.cli import main
from cnnctc.errors import CnnctcError, ManifestError

GiB = 1 << 30


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def word_image(path, text_color=0):
    image = Image.new("RGB", (100, 32), "white")
    image.paste((text_color,) * 3, (20, 8, 80, 24))
    image.save(path)
    return path


# A tiny but real cnnctc-shaped ONNX model: (N, 3, 32, 100) -> (N, 26, 37) logits with the default
# model's manifest in its metadata. Built in a child process, so that onnx's protobuf never shares
# this process with MindSpore.
MAKE_ONNX = r"""
import json, sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
manifest = json.loads(sys.argv[2])
rng = np.random.default_rng(0)
weight = numpy_helper.from_array(rng.standard_normal((100, 26 * 37)).astype(np.float32), "w")
shape = numpy_helper.from_array(np.array([-1, 26, 37], np.int64), "shape")
nodes = [helper.make_node("ReduceMean", ["images"], ["columns"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["columns", "w"], ["flat"]),
         helper.make_node("Reshape", ["flat", "shape"], ["logits"])]
graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 100])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 26, 37])],
                          initializer=[weight, shape])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 7
meta = {"cnnctc_manifest": json.dumps(manifest), "alphabet": manifest["alphabet"], "num_class": "37"}
for key, value in meta.items():
    model.metadata_props.add(key=key, value=value)
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
"""


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from cnnctc.registry import get_model
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    manifest = json.dumps(get_model("mindspore/1.3/cnnctc_mjstiiit").manifest.to_dict())
    run = subprocess.run([sys.executable, "-c", MAKE_ONNX, str(path), manifest], env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return path


def run_cli(capsys, *args):
    """main(args) in this process: (exit status, stdout lines, stderr lines)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def assert_error_lines(err, count=1):
    assert len(err) == count and all(line.startswith("cnnctc: ") for line in err), err
    assert not any("Traceback" in line for line in err)


# --- huge files -----------------------------------------------------------------------------------

def test_a_huge_sparse_image_among_good_ones_is_one_unreadable_input(tmp_path, capsys, tiny_onnx):
    images = tmp_path / "images"
    images.mkdir()
    good = [word_image(images / "a.png"), word_image(images / "c.png", 90)]
    huge = images / "b.png"
    with open(huge, "wb") as f:  # 100 GB, of which nothing is on disk
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(100 * 10 ** 9)
    before = {p: digest(p) for p in good}
    status, out, err = run_cli(capsys, "predict", images, "--checkpoint", tiny_onnx)
    assert status == 1
    assert [line.split(":")[0] for line in out] == [str(p) for p in good]  # every good input is read
    assert_error_lines(err, 2)
    assert err[0].startswith(f"cnnctc: error: {huge}: 93.1 GiB, larger than any image") and "not read" in err[0]
    assert err[1] == "cnnctc: 1 of 3 inputs could not be read"
    assert {p: digest(p) for p in good} == before and huge.stat().st_size == 100 * 10 ** 9


def sparse_png(path, size=100 * 10 ** 9):
    with open(path, "wb") as f:  # a PNG signature, then nothing on disk
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(size)
    return path


def test_make_lmdb_and_quantize_skip_a_huge_file_and_use_the_good_ones(tmp_path, capsys, tiny_onnx):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "c.png"):
        word_image(images / name)
    sparse_png(images / "b.png")
    labels = tmp_path / "labels.tsv"
    labels.write_text("a.png\tab\nb.png\tcd\nc.png\tef\n")
    before = {p: digest(p) for p in (images / "a.png", images / "c.png", labels, tiny_onnx)}
    status, out, err = run_cli(capsys, "make-lmdb", images, labels, tmp_path / "out.lmdb")
    assert status == 0 and out == [f"{tmp_path / 'out.lmdb'}: 2 samples written; skipped 1 unreadable images, 0 "
                                   "empty labels, 0 malformed lines"], out
    assert not any("Traceback" in line for line in err)
    import lmdb
    with lmdb.open(str(tmp_path / "out.lmdb"), readonly=True, lock=False) as env, env.begin() as txn:
        assert int(txn.get(b"num-samples")) == 2
    # quantize imports onnx (native protobuf): its own process, which never imports MindSpore.
    run = subprocess.run([sys.executable, "-m", "cnnctc", "-q", "quantize", str(tiny_onnx), "--calib", str(images),
                          "--out", str(tmp_path / "tiny.int8.onnx")], env=subprocess_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert (tmp_path / "tiny.int8.onnx").is_file()
    assert {p: digest(p) for p in before} == before


def test_quantize_bounds_the_calibration_set_while_parsing(tmp_path, capsys, tiny_onnx):
    before = digest(tiny_onnx)
    status, out, err = run_cli(capsys, "quantize", tiny_onnx, "--calib", tmp_path, "--out", tmp_path / "q.onnx",
                               "--max-images", "99999999999999")
    errors = [line for line in err if "error:" in line]
    assert status == 2 and out == [] and len(errors) == 1, err
    assert "--max-images: must be at most 100000 (all are held in memory)" in errors[0]
    assert not (tmp_path / "q.onnx").exists() and digest(tiny_onnx) == before


def test_a_large_file_that_is_no_image_is_refused_by_its_header_without_being_read(tmp_path):
    from cnnctc.transforms import ImageError, load_image, read_image_file
    junk = tmp_path / "junk.png"
    with open(junk, "wb") as f:  # 900 MB under the size bound, sparse: only the header decides
        f.truncate(900 * 2 ** 20)
    tracemalloc.start()
    try:
        for read in (load_image, read_image_file):
            with pytest.raises(ImageError, match="not a readable image"):
                read(junk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20, peak  # far below the file's 900 MB: it was never read whole


def test_preprocess_takes_one_image_in_any_byte_form_and_names_wrong_types(tmp_path):
    from cnnctc.transforms import ImageError, load_image, preprocess
    path = word_image(tmp_path / "w.png")
    data = path.read_bytes()
    expected = preprocess([path])
    for single in (data, bytearray(data), memoryview(data), Image.open(path), str(path)):
        batch = preprocess(single)
        assert batch.shape == (1, 3, 32, 100) and np.array_equal(batch, expected), type(single)
    with pytest.raises(TypeError, match="images must be an image .* got int"):
        preprocess(5)
    with pytest.raises(TypeError, match="an image must be a path, encoded bytes, a PIL image or a uint8 array; got "
                                        "float") as caught:
        load_image(1.5)
    assert isinstance(caught.value, ImageError)  # a batch run still counts it as one unreadable input


# --- out of memory --------------------------------------------------------------------------------

def test_out_of_memory_says_what_happened_and_what_to_do(tmp_path):
    def limit_memory():  # 128 MB of address space: enough for a small render, far from what 10^6 words take
        resource.setrlimit(resource.RLIMIT_AS, (128 * 2 ** 20, 128 * 2 ** 20))

    def render(out, count):
        return subprocess.run([sys.executable, "-m", "cnnctc", "-q", "render", str(out), "--count", str(count)],
                              env=subprocess_env(), capture_output=True, text=True, timeout=300,
                              preexec_fn=limit_memory)
    assert render(tmp_path / "few", 3).returncode == 0  # the limit leaves room for the program itself
    from cnnctc._checks import MAX_RENDER_COUNT
    run = render(tmp_path / "words", MAX_RENDER_COUNT)  # the most a user may ask for: far beyond 64 MB
    err = run.stderr.splitlines()
    assert run.returncode == 1 and len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert err[0] == ("cnnctc: error: out of memory in `cnnctc render`; free memory (or raise the memory limit), "
                      "or ask for less at once (a smaller --count)")
    assert not (tmp_path / "words").exists()


def test_an_error_without_a_message_still_says_what_to_do(capsys, monkeypatch):
    import dataclasses
    import cnnctc.cli as cli

    def fail(args):
        raise CnnctcError()
    monkeypatch.setattr(cli, "COMMANDS", [dataclasses.replace(c, run=fail) if c.name == "list" else c
                                          for c in cli.COMMANDS])
    status, out, err = run_cli(capsys, "list")
    assert status == 1 and not out
    assert_error_lines(err)
    assert err[0] == ("cnnctc: error: CnnctcError without a message (a bug in cnnctc; run again with CNNCTC_DEBUG=1 "
                      "and report it)")


# --- one alphabet check ---------------------------------------------------------------------------

BAD_SYMBOLS = ["\n", "\t", "\0", "\x1b", "\x7f", "\u2028"]


@pytest.mark.parametrize("symbol", BAD_SYMBOLS)
def test_every_reader_of_an_alphabet_refuses_control_characters(tmp_path, capsys, symbol):
    from cnnctc.alphabet import check_alphabet
    from cnnctc.registry import load_manifest
    alphabet = "abc" + symbol
    with pytest.raises(ValueError, match="holds control or line-break characters"):
        check_alphabet(alphabet)
    manifest = write_manifest(tmp_path / "m.json", alphabet=alphabet)
    with pytest.raises(ManifestError, match="the alphabet holds control or line-break characters"):
        load_manifest(manifest)
    status, _, err = run_cli(capsys, "finetune", "--train", tmp_path, "--out", tmp_path / "run", "--alphabet",
                             alphabet)
    assert status == 2 and "--alphabet: holds control or line-break characters" in err[-1]
    from cnnctc.train import check_alphabet as train_check
    with pytest.raises(CnnctcError, match="--alphabet holds control"):
        train_check(alphabet)
    assert not (tmp_path / "run").exists()


def test_an_alphabet_with_a_space_or_any_printable_symbol_is_fine():
    from cnnctc.alphabet import alphabet_problem
    assert alphabet_problem("0123456789 abcdefghijklmnopqrstuvwxyzäöüßé€") is None
    assert alphabet_problem("aba") == "repeats 'a'; every symbol must name one class"
    assert alphabet_problem("") == "is empty"


# --- streams ---------------------------------------------------------------------------------------

def predict_process(args, *, shell_redirect, env=None):
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "cnnctc", "-q", "predict", *map(str, args)])
    return subprocess.run(["bash", "-c", f"exec {command} {shell_redirect}"], env=env or subprocess_env(),
                          stderr=subprocess.PIPE, text=True, timeout=120)


def test_a_closed_stdout_is_an_error_not_a_silent_success(tmp_path, tiny_onnx):
    image = word_image(tmp_path / "w.png")
    run = predict_process([image, "--checkpoint", tiny_onnx], shell_redirect=">&-")
    err = run.stderr.splitlines()
    assert run.returncode == 1 and len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert err[0].startswith("cnnctc: error: standard output is closed, so the results could not be written")


def test_a_full_stdout_is_an_error_that_says_the_disk_is_full(tmp_path, tiny_onnx):
    image = word_image(tmp_path / "w.png")
    run = predict_process([image, "--checkpoint", tiny_onnx], shell_redirect=">/dev/full")
    err = run.stderr.splitlines()
    assert run.returncode == 1 and len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert err[0].startswith("cnnctc: error: cannot write the results to standard output: No space left on "
                             "device (the disk is full)")


def test_json_lines_stay_valid_json_on_an_ascii_only_stdout(tmp_path, capsys, monkeypatch, tiny_onnx):
    names = ["café.png", "日本.png", "plain.png"]
    for name in names:
        word_image(tmp_path / name)
    buffer = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buffer, encoding="ascii", errors="strict"))
    status = main(["predict", str(tmp_path), "--checkpoint", str(tiny_onnx), "--format", "json"])
    sys.stdout.flush()
    assert status == 0
    records = [json.loads(line) for line in buffer.getvalue().decode("ascii").splitlines()]
    assert sorted(os.path.basename(r["path"]) for r in records) == sorted(names)
    assert all(isinstance(r["confidence"], float) and 0 <= r["confidence"] <= 1 for r in records)


# --- environment -----------------------------------------------------------------------------------

# The child drops to a uid without a passwd entry after importing what `cnnctc list` needs (the
# interpreter may live where only root can read).
NO_HOME = r"""
import locale, os, sys
import cnnctc._signals, cnnctc.cli, cnnctc.download, cnnctc.registry
cnnctc.cli.build_parser()  # argparse's gettext modules, loaded while they can be read
os.setgroups([])
os.setgid(int(sys.argv[1]))
os.setuid(int(sys.argv[1]))
sys.exit(cnnctc.cli.main(["list"]))
"""


def test_no_home_directory_names_the_variable_to_set(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to run a child as a uid without a passwd entry")
    import pwd
    uid = next(u for u in range(54321, 60000) if not _has_passwd(pwd, u))
    env = {k: v for k, v in subprocess_env().items() if k not in ("HOME", "CNNCTC_CACHE_DIR")}
    run = subprocess.run([sys.executable, "-c", NO_HOME, str(uid)], env=env, capture_output=True, text=True,
                         timeout=120, cwd="/")
    err = run.stderr.splitlines()
    assert run.returncode == 1 and len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert err[0] == (f"cnnctc: error: cannot find a home directory for the cache (HOME is not set and user id {uid} "
                      "has no passwd entry); set CNNCTC_CACHE_DIR (or --cache-dir) to a writable folder, or set HOME")


def _has_passwd(pwd, uid):
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_a_tilde_of_an_unknown_user_names_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("CNNCTC_CACHE_DIR", "~nosuchuser/x")
    status, out, err = run_cli(capsys, "list")
    assert status == 1 and not out
    assert_error_lines(err)
    assert err[0] == ("cnnctc: error: CNNCTC_CACHE_DIR '~nosuchuser/x': cannot expand ~nosuchuser (there is no user "
                      "'nosuchuser'); give the full path instead")
    status, _, err = run_cli(capsys, "download", "--cache-dir", "~nosuchuser/y")
    assert status == 1 and err == ["cnnctc: error: the cache folder '~nosuchuser/y': cannot expand ~nosuchuser "
                                   "(there is no user 'nosuchuser'); give the full path instead"]


# --- downloads and file helpers --------------------------------------------------------------------

def test_a_partial_download_that_is_a_symlink_is_replaced_not_written_through(tmp_path, serve):
    from cnnctc.download import fetch
    from cnnctc.errors import DownloadError
    from cnnctc.registry import load_manifest
    content = os.urandom(2 * 2 ** 20 + 7)
    server = serve(content)
    server.plan = ["drop:1000000"]
    manifest = load_manifest(write_manifest(tmp_path / "m.json", url=server.url, sha256=server.sha256,
                                            file_name="asset.ckpt"))
    with pytest.raises(DownloadError):
        fetch(manifest, retries=0, backoff=0.01, allow_http=True, quiet=True)  # leaves .part and its record
    part = manifest.cache_path().with_name("asset.ckpt.part")
    assert part.stat().st_size > 0
    users = tmp_path / "my-thesis.pdf"
    users.write_bytes(os.urandom(part.stat().st_size))
    before, size = digest(users), users.stat().st_size
    part.unlink()
    part.symlink_to(users)
    path = fetch(manifest, backoff=0.01, allow_http=True, quiet=True)
    assert path.read_bytes() == content
    assert digest(users) == before and users.stat().st_size == size
    assert server.log[-1][1] is None  # started over: nothing was appended to the link's target
    assert not os.path.lexists(part)


def test_verify_file_names_a_wrong_argument(tmp_path):
    from cnnctc.download import verify_file
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(TypeError, match="verify_file: expected must be the SHA-256 .* got NoneType"):
        verify_file(path, None)
    with pytest.raises(ValueError, match="verify_file: expected must be 64 hexadecimal digits"):
        verify_file(path, "abc")
    with pytest.raises(TypeError, match="verify_file: path must be a file path"):
        verify_file(None, hashlib.sha256(b"x").hexdigest())
    assert verify_file(path, hashlib.sha256(b"x").hexdigest().upper()) == path


def test_open_regular_refuses_fifos_at_once_and_links_when_asked(tmp_path):
    from cnnctc._files import NotRegularFile, open_regular, rename_no_replace
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="a FIFO"):
        open_regular(fifo)  # returns at once: no writer is waited for
    target = tmp_path / "t"
    target.write_bytes(b"mine")
    link = tmp_path / "link"
    link.symlink_to(target)
    with open_regular(link) as f:
        assert f.read() == b"mine"
    with pytest.raises(NotRegularFile, match="a symbolic link"):
        open_regular(link, follow_symlinks=False)
    new = tmp_path / "new"
    new.write_bytes(b"new")
    with pytest.raises(FileExistsError):
        rename_no_replace(new, target)
    assert target.read_bytes() == b"mine" and new.read_bytes() == b"new"


# --- MindSpore: the loader's arguments, slim, and the hub entry point ------------------------------

def test_load_names_a_wrong_network_option():
    from cnnctc.loader import load
    with pytest.raises(TypeError, match=r"load\(\): output_channel must be a whole number, got str '64'"):
        load(output_channel="64", pretrained=False)
    with pytest.raises(TypeError, match=r"load\(\): output_channel must be a whole number, got bool"):
        load(output_channel=True, pretrained=False)
    with pytest.raises(ValueError, match=r"load\(\): output_channel must be a multiple of 16 from 16 to 1024"):
        load(output_channel=16384, pretrained=False)
    with pytest.raises(TypeError, match=r"load\(\) got an unexpected keyword argument 'top_k'"):
        load(top_k=3, pretrained=False)
    net = load(output_channel=np.int64(32), pretrained=False)  # numpy integers are integers
    assert net.hidden_size == 32


def test_slim_never_replaces_its_input_by_any_name(tmp_path):
    from cnnctc.checkpoint import save_checkpoint, slim
    from cnnctc.network import CNNCTC
    src = save_checkpoint(CNNCTC(output_channel=16), tmp_path / "src.ckpt",
                          metadata={"alphabet": "0123456789abcdefghijklmnopqrstuvwxyz"})
    before = digest(src)
    hard = tmp_path / "hard.ckpt"
    os.link(src, hard)
    soft = tmp_path / "soft.ckpt"
    soft.symlink_to(src)
    for dst in (src, hard, soft):
        with pytest.raises(CnnctcError, match="is the source checkpoint itself"):
            slim(src, dst, overwrite=True)
    assert digest(src) == before and os.path.islink(soft)
    kept, dropped = slim(src, tmp_path / "slim.ckpt")
    assert kept > 0 and not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left


HUB_USER = r"""
import importlib.util, json, os, sys
import mindspore as ms
from mindspore._c_expression import DeviceManagerConf
ms.set_context(mode=ms.PYNATIVE_MODE)
ms.set_device("CPU")
before = (ms.get_context("mode"), ms.get_context("device_target"), DeviceManagerConf.get_instance().get_device_id())
code_dir = sys.argv[1]
sys.path.insert(0, code_dir)
spec = importlib.util.spec_from_file_location("mindspore_hub_conf", os.path.join(code_dir, "mindspore_hub_conf.py"))
conf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conf)
net = conf.create_network("cnnctc")
after = (ms.get_context("mode"), ms.get_context("device_target"), DeviceManagerConf.get_instance().get_device_id())
import numpy as np
logits = net(ms.Tensor(np.zeros((1, 3, 32, 100), np.float32))).shape  # runs in the user's PYNATIVE mode
# cnnctc.load sets GRAPH_MODE, as documented, but keeps the device the user chose.
import cnnctc
from cnnctc.errors import CnnctcError
cnnctc.load(pretrained=False, output_channel=16)
loaded = (ms.get_context("mode"), ms.get_context("device_target"), DeviceManagerConf.get_instance().get_device_id())
try:
    cnnctc.load(pretrained=False, output_channel=16, device_target="GPU")
    switch = "switched"
except CnnctcError as exc:
    switch = str(exc)
print(json.dumps({"before": before, "after": after, "num_class": net.num_class, "logits": list(logits),
                  "pynative": ms.PYNATIVE_MODE, "graph": ms.GRAPH_MODE, "loaded": loaded, "switch": switch}))
"""


def test_the_hub_entry_point_leaves_the_users_mindspore_alone_and_builds_its_uid(tmp_path):
    from cnnctc.hub import hub_install
    hub = tmp_path / "hub"
    old = os.umask(0o022)
    try:
        [(card, code_dir)] = hub_install(hub, "mindspore/1.3/cnnctc_mjstiiit")
    finally:
        os.umask(old)
    # Modes the umask gives, not mkdtemp's 0700: other users can read a shared hub folder.
    assert stat.S_IMODE(code_dir.stat().st_mode) == 0o755
    assert stat.S_IMODE((code_dir / "cnnctc" / "loader.py").stat().st_mode) == 0o644
    assert stat.S_IMODE(card.stat().st_mode) == 0o644
    # The user's own manifest (another alphabet) is in the environment: the uid's network is built anyway.
    mine = write_manifest(tmp_path / "mine.json", alphabet="abc", network={"output_channel": 512})
    env = subprocess_env(CNNCTC_MANIFEST=mine)
    env.pop("PYTHONPATH")  # only the code directory provides cnnctc
    run = subprocess.run([sys.executable, "-c", HUB_USER, str(code_dir)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["before"] == result["after"] == [result["pynative"], "CPU", 0]
    assert result["num_class"] == 37 and result["logits"] == [1, 26, 37]
    assert result["loaded"] == [result["graph"], "CPU", 0]
    assert result["switch"].startswith("MindSpore in this process already runs on CPU (mindspore.set_device or "
                                       "set_context); cnnctc does not switch it to GPU")


def test_a_second_hub_install_at_once_is_refused_in_one_line(tmp_path):
    from cnnctc._files import exclusive_lock
    from cnnctc.hub import hub_install
    hub = tmp_path / "hub"
    base = hub / "mindspore" / "1.3"
    base.mkdir(parents=True)
    with exclusive_lock(base):  # what a running hub-install holds
        run = subprocess.run([sys.executable, "-m", "cnnctc", "hub-install", "--hub-dir", str(hub), "--model",
                              "mindspore/1.3/cnnctc_mjstiiit"], env=subprocess_env(), capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 1 and len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr
    assert "another cnnctc hub-install is writing" in run.stderr and "let it finish" in run.stderr
    assert not (base / "cnnctc").exists() and not (base / "cnnctc_mjstiiit.md").exists()
    (base / ".cnnctc.k1ll3d_9").mkdir()  # the work folder of a hub-install killed with -9
    (base / ".cnnctc.k1ll3d_9" / "loader.py").write_text("half a copy")
    (base / ".my-notes").write_text("the user's own hidden file")
    assert hub_install(hub, "mindspore/1.3/cnnctc_mjstiiit")  # once it is done, the next one runs
    # No lock file or work folder is left, the dead run's is cleaned, the user's file is kept.
    assert sorted(os.listdir(base)) == [".my-notes", "cnnctc", "cnnctc_mjstiiit.md"]
