"""The bundled model cnnctc/mini-synth: shipped in the package, honest about itself, read offline."""
import hashlib
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, isolate, run_in_process, subprocess_env
from cnnctc.checkpoint import ALPHABET_KEY, read_checkpoint
from cnnctc.download import check_cached, fetch
from cnnctc.errors import DownloadError, IntegrityError, OfflineError
from cnnctc.registry import BUNDLED_MODEL, DEFAULT_MODEL, get_model
from cnnctc.render import FONT_CANDIDATES, find_fonts, write_word_images

ENTRY = get_model(BUNDLED_MODEL)
ALL_FONTS = find_fonts() == list(FONT_CANDIDATES)
needs_fonts = pytest.mark.skipif(not ALL_FONTS, reason="the Debian fonts it was trained on are not all installed "
                                 "(fonts-dejavu-core fonts-liberation fonts-freefont-ttf)")


def cnnctc(*args, **env):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=600)


def test_the_file_is_shipped_small_weights_only_and_matches_its_manifest():
    path = ENTRY.bundled
    assert path.is_file() and path.parent.parent == ENTRY.card.parent.parent.parent  # assets/models, assets/cards
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ENTRY.manifest.sha256
    assert path.stat().st_size < 5 * 2**20
    state = read_checkpoint(path)
    assert not [n for n in state if n.split(".")[0] in ("moment", "mean_square", "mean_grad", "global_step")]
    assert state[ALPHABET_KEY] == ENTRY.manifest.alphabet == "0123456789abcdefghijklmnopqrstuvwxyz"
    assert tuple(state["Prediction.weight"].shape) == (37, 64) == (ENTRY.manifest.num_class,
                                                                 ENTRY.manifest.network["output_channel"])
    # setuptools ships it: the package data of cnnctc.assets (the assets folder) names it.
    [patterns] = re.findall(r'^"cnnctc.assets" = \[(.*)\]$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert any(path.relative_to(ROOT / "assets").match(p) for p in re.findall(r'"([^"]+)"', patterns))


def test_the_card_says_what_it_is_and_holds_the_measured_numbers():
    card = " ".join(ENTRY.card.read_text(encoding="utf-8").split())
    assert ENTRY.manifest.sha256 in card
    for claim in ("not the MindSpore Hub model", "not trained on photographs", "rendered words",
                  "benchmarks/train_mini_synth.py"):
        assert claim in card, claim
    measured = ENTRY.manifest.extra["rendered_word_accuracy"]
    assert measured["clean"] >= 95
    assert f"clean {measured['clean']:.2f}%" in card and f"blurred {measured['noise']:.2f}%" in card
    models_page = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    assert f"{measured['clean']:.2f}" in models_page and f"{measured['noise']:.2f}" in models_page
    # Its accuracy is on rendered words, not the hub's benchmark: the manifest does not claim one.
    assert ENTRY.manifest.accuracy is None and ENTRY.manifest.url.startswith("bundled:")


def test_it_is_served_offline_from_the_package_and_never_chosen_silently(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    cache = tmp_path / "cache"
    assert fetch(ENTRY.manifest, cache) == ENTRY.bundled
    assert check_cached(ENTRY.manifest, cache) == "bundled"
    assert not cache.exists()  # nothing copied, nothing downloaded
    assert get_model().uid == DEFAULT_MODEL != BUNDLED_MODEL
    with pytest.raises(OfflineError, match="--model cnnctc/synth-scene"):  # offers a bundled model, uses none
        fetch(get_model().manifest, cache)


def test_a_failed_download_names_the_bundled_scene_model_as_the_way_to_try_offline(tmp_path):
    with socket_closed_port() as port:
        manifest = get_model().manifest.replace(url=f"http://127.0.0.1:{port}/x.ckpt")
        with pytest.raises(DownloadError) as caught:
            fetch(manifest, tmp_path / "cache", allow_http=True, quiet=True, retries=0)
    message = str(caught.value)
    assert "\n" not in message and "--model cnnctc/synth-scene" in message   # the bundled model that reads photos


def test_finetune_without_the_hub_asset_names_the_bundled_model_as_finetune_takes_it(tmp_path, monkeypatch):
    from cnnctc.data import make_lmdb
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    write_word_images(tmp_path / "images", 8, seed=5)
    make_lmdb(tmp_path / "images", tmp_path / "images" / "labels.tsv", tmp_path / "train")
    run = run_in_process("finetune", "--train", tmp_path / "train", "--out", tmp_path / "run", "--steps", 1,
                         "--batch-size", 4)
    [line] = [line for line in run.stderr.splitlines() if line.startswith("cnnctc: error:")]
    assert run.returncode == 1 and "offline" in line and not (tmp_path / "run").exists()
    assert "try the package offline with --pretrained cnnctc/synth-scene " in line
    assert "--model" not in line and "--output-channel" not in line   # finetune has no --model, reads the width


def socket_closed_port():
    """A context manager yielding a 127.0.0.1 port that refuses connections (bound, not listening)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            yield sock.getsockname()[1]
    return closed()


def test_a_damaged_bundled_file_is_refused(tmp_path, monkeypatch):
    import cnnctc.registry as registry
    damaged = tmp_path / ENTRY.bundled.name
    data = bytearray(ENTRY.bundled.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setitem(registry._REGISTRY, BUNDLED_MODEL, registry.ModelEntry(ENTRY.manifest, ENTRY.card, damaged))
    with pytest.raises(IntegrityError, match="damaged .*reinstall"):
        fetch(ENTRY.manifest)


def test_list_shows_it_as_bundled():
    run = cnnctc("list")
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line.split() for line in run.stdout.splitlines()[1:]}
    assert rows[BUNDLED_MODEL][-1] == "bundled"
    assert rows[BUNDLED_MODEL][-3:-1] == [f"{ENTRY.bundled.stat().st_size / 2**20:.1f}", "MiB"]
    assert rows[DEFAULT_MODEL][-1] == "missing"


@needs_fonts
def test_it_reads_held_out_rendered_words(tmp_path):
    """Words on a seed it was not trained or measured on, in the API and from the command line, offline."""
    from cnnctc.recognizer import Recognizer
    labels = write_word_images(tmp_path / "words", 40, seed=4242)
    truth = dict(line.split("\t") for line in labels.read_text().splitlines())
    reader = Recognizer(model=BUNDLED_MODEL, batch_size=20, device_target="CPU")
    assert reader.alphabet == ENTRY.manifest.alphabet
    texts = [p.text for p in reader.recognize([tmp_path / "words" / name for name in sorted(truth)])]
    correct = sum(text == truth[name] for text, name in zip(texts, sorted(truth)))
    assert correct >= 36, list(zip(texts, sorted(truth.values())))

    word = tmp_path / "words" / "00000.png"
    run = cnnctc("predict", "--model", BUNDLED_MODEL, word, "--format", "tsv", CNNCTC_OFFLINE=1,
                 CNNCTC_CACHE_DIR=tmp_path / "empty-cache")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\t")[:2] == [str(word), texts[0]]
    cached = tmp_path / "empty-cache"  # only the ONNX export --runtime auto keeps, never the model itself
    assert not cached.exists() or {p.name for p in cached.iterdir()} == {"cnnctc-onnx"}


@needs_fonts
def test_finetune_starts_from_it_offline(tmp_path, monkeypatch, caplog):
    import logging
    from cnnctc.data import make_lmdb
    from cnnctc.train import TRAIN_STATE_KEY, TrainConfig, finetune
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    caplog.set_level(logging.INFO, logger="cnnctc")
    write_word_images(tmp_path / "images", 16, seed=99)
    make_lmdb(tmp_path / "images", tmp_path / "images" / "labels.tsv", tmp_path / "train")
    # No output_channel: the run takes the bundled model's width (64) from its checkpoint.
    result = finetune(tmp_path / "train", tmp_path / "train", tmp_path / "run", pretrained=BUNDLED_MODEL,
                      config=TrainConfig(steps=1, batch_size=8, lr=1e-6, log_every=1000, workers=1))
    state = json.loads(read_checkpoint(result.last_checkpoint)[TRAIN_STATE_KEY])
    assert re.search("mini-synth", json.dumps(state["pretrained"]))
    assert state["config"]["output_channel"] == ENTRY.manifest.network["output_channel"] == 64
    # One word for each count of processes: msrun's are ranks, --workers counts the loader's.
    assert "batch 8 x 1 rank, 1 loader worker per rank," in caplog.text
    # One step at a tiny rate from the bundled weights: it still reads what the bundled model reads.
    assert result.best_accuracy >= 80


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory):
    """``export --model cnnctc/mini-synth`` made once, offline; the tests that use it only read it."""
    from cnnctc.export import export_model
    folder = tmp_path_factory.mktemp("bundled")
    with pytest.MonkeyPatch.context() as patch:
        isolate(patch, folder / "cache")
        patch.setenv("CNNCTC_OFFLINE", "1")
        return export_model(folder / "mini.onnx", model=BUNDLED_MODEL, device_target="CPU")


@needs_fonts
def test_export_quantize_and_eval_offline(tmp_path, monkeypatch, bundled_onnx):
    """`export --model cnnctc/mini-synth`, then quantize and eval the files: no network, no cache."""
    from cnnctc.data import make_lmdb
    from cnnctc.evaluation import evaluate
    from cnnctc.quantize import quantize_model
    from cnnctc.recognizer import Recognizer
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    write_word_images(tmp_path / "words", 30, seed=777)
    make_lmdb(tmp_path / "words", tmp_path / "words" / "labels.tsv", tmp_path / "words.lmdb")
    onnx_file = bundled_onnx
    int8_file = tmp_path / "mini.int8.onnx"
    quantize_model(onnx_file, [tmp_path / "words.lmdb"], int8_file)
    _, bundled = evaluate(Recognizer(model=BUNDLED_MODEL, device_target="CPU"), [tmp_path / "words.lmdb"])
    _, exported = evaluate(Recognizer(onnx_file), [tmp_path / "words.lmdb"])
    _, quantized = evaluate(Recognizer(int8_file), [tmp_path / "words.lmdb"])
    assert exported.as_dict() == bundled.as_dict() and bundled.kept == 30 and bundled.accuracy >= 80
    assert quantized.accuracy >= bundled.accuracy - 10


# Rewrites an export's alphabet, in its top-level copy and in its manifest alike (a file that agrees
# with itself): reversed, so every class reads as another symbol. Its own process: onnx's protobuf.
LYING_ALPHABET = r"""
import json, sys
import onnx
model = onnx.load(sys.argv[1])
for entry in model.metadata_props:
    if entry.key == "alphabet":
        entry.value = json.dumps(json.loads(entry.value)[::-1])
    elif entry.key == "cnnctc_manifest":
        manifest = json.loads(entry.value)
        manifest["alphabet"] = manifest["alphabet"][::-1]
        entry.value = json.dumps(manifest)
onnx.save(model, sys.argv[2])
"""


def test_an_export_that_gives_its_weights_another_alphabet_is_refused_and_never_read_from_the_cache(tmp_path,
                                                                                                   monkeypatch):
    word = tmp_path / "words" / "00000.png"
    write_word_images(tmp_path / "words", 1, words=["4g7"])
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNCTC_CACHE_DIR", str(cache))
    # In-process: what the commands print and export is the point, not a new process.
    first = run_in_process("predict", "--model", BUNDLED_MODEL, word, "--format", "tsv")
    assert first.returncode == 0, first.stderr
    [cached] = (cache / "cnnctc-onnx").glob("*.onnx")
    lie = tmp_path / "lie.onnx"
    run = subprocess.run([sys.executable, "-c", LYING_ALPHABET, str(cached), str(lie)], env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    refused = run_in_process("predict", "--checkpoint", lie, word)
    assert refused.returncode == 1 and refused.stdout == "", refused.stderr
    assert (f"{lie}: it names the weights of {BUNDLED_MODEL} (sha256 {ENTRY.manifest.sha256[:12]}...) but gives "
            "them another alphabet than that model's") in refused.stderr
    cached.write_bytes(lie.read_bytes())   # a cache someone else wrote into
    again = run_in_process("predict", "--model", BUNDLED_MODEL, word, "--format", "tsv")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout and "exporting again" in again.stderr
    assert again.stderr.count("exporting again") == 1


def test_verify_and_hub_install_know_it_is_bundled(tmp_path):
    run = cnnctc("verify", "--model", BUNDLED_MODEL)
    assert run.returncode == 0 and run.stdout.startswith(f"OK  {ENTRY.bundled}  sha256 {ENTRY.manifest.sha256}")
    run = cnnctc("hub-install", "--model", BUNDLED_MODEL, "--hub-dir", tmp_path / "hub")
    assert run.returncode == 1 and "not published on MindSpore Hub" in one_line(run)
    assert not list((tmp_path / "hub").rglob("*.md"))


def one_line(run):
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


# The same export told it comes from other weights (its manifest, and its uid or not), while its lineage
# still says it was exported from the bundled model's asset.
OTHER_WEIGHTS = r"""
import json, sys
import onnx
model = onnx.load(sys.argv[1])
keep_uid = sys.argv[3] == "keep-uid"
for entry in model.metadata_props:
    if entry.key == "alphabet":
        entry.value = json.dumps(json.loads(entry.value)[::-1])
    elif entry.key == "source_sha256":
        entry.value = json.dumps("ab" * 32)
    elif entry.key == "cnnctc_manifest":
        manifest = json.loads(entry.value)
        manifest.update(alphabet=manifest["alphabet"][::-1], sha256="ab" * 32)
        if not keep_uid:
            manifest["uid"] = "my/own"
        entry.value = json.dumps(manifest)
onnx.save(model, sys.argv[2])
"""


@pytest.mark.parametrize("uid", ["keep-uid", "own-uid"])
def test_an_export_that_says_it_holds_other_weights_than_its_lineage_is_refused(tmp_path, uid, bundled_onnx):
    from cnnctc.recognizer import Recognizer
    good = bundled_onnx
    lie = tmp_path / "lie.onnx"
    run = subprocess.run([sys.executable, "-c", OTHER_WEIGHTS, str(good), str(lie), uid], env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with pytest.raises(Exception, match=r"lie.onnx: its metadata contradicts itself \(the lineage's exported "
                                        r"checkpoint is 60cb2cb0a79d\.\.\. but its manifest's weights abab"):
        Recognizer(lie)
