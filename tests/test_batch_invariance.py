"""A word reads the same whatever the batch it is read in (issue 30).

Other recognizers return other readings at other batch sizes (garbage for batch_size > 1, a
TensorRT CRNN wrong at batch 3 and 12). Ours pads short final batches (MindSpore, in the shapes of
:func:`cnnctc.recognizer.padded_batch_size`) and runs dynamic-batch ONNX files at whatever size
comes, so each runtime reads 38 real images at batch sizes 1, 3, 7, 32 and 33 and is held to its
own reading at batch size 1: MindSpore, onnxruntime float32 and an int8 file, on the bundled
cnnctc/synth-scene and on a full-size (output_channel 512) network (every third image: 13). 38
images make padded final batches at 7 (3 images run as 4), 32 (6 as 8) and 33 (5 as 8).

Measured (2-core x86 CPU, MindSpore 2.8, onnxruntime 1.32): onnxruntime float32 and int8 give
bit-identical logits at every batch size, and so does MindSpore on the bundled width-64 model. At
width 512 MindSpore does not: its CPU convolution (oneDNN gemm:jit) sums in an order that depends
on the batch shape (here shapes {1}, {2}, {3-6, 8} and {7, 9-33} each agree bit for bit), a float32
rounding difference of about 2e-6 of the logits' range. A row's logits depend only on the shape it
runs in, never on its place in the batch or on the padding rows beside it, and the texts never
change; the confidences move by up to 7.6e-6 here, by 1.7e-5 with another seed and by 7e-5 with logits
up to 335, so at full size MindSpore's confidences are held to 1e-4, everything else to 1e-5.
MindSpore and onnxruntime float32 read the same texts, their confidences 5.3e-6 (bundled) and
1.0e-5 (full size) apart: held to 1e-4, as two runtimes round differently.
"""
import shutil

import numpy as np
import pytest

import mindspore as ms  # noqa: F401  (MindSpore before onnx in this process: SPEC section 9; onnx comes lazily)

from conftest import ROOT, isolate, seed_weights
from cnnctc.checkpoint import save_checkpoint
from cnnctc.export import export_model
from cnnctc.loader import create_network
from cnnctc.quantize import quantize_model
from cnnctc.recognizer import Recognizer, padded_batch_size
from cnnctc.registry import SCENE_MODEL, get_model
from cnnctc.render import write_word_images
from cnnctc.synth.writer import write_scene_images
from cnnctc.transforms import find_images

BATCH_SIZES = (1, 3, 7, 32, 33)
COUNT = 38   # 37 rendered words and one photograph
ALPHABET = get_model(SCENE_MODEL).manifest.alphabet
# How far a confidence may move from its batch-size-1 value, and from the other float32 runtime's; see
# the module's docstring.
CONFIDENCE_TOLERANCE = {"mindspore": {"bundled": 1e-5, "full": 1e-4}, "onnxruntime": 1e-5, "int8": 1e-5}
BETWEEN_RUNTIMES = 1e-4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """This module's folder; the fixtures below run with no user settings and a cache of their own."""
    root = tmp_path_factory.mktemp("batches")
    with pytest.MonkeyPatch.context() as patch:
        isolate(patch, root / "cache")
        yield root


@pytest.fixture(scope="module")
def images(workdir):
    """Plain and noisy renders, scene words and the photograph docs/examples/joint.png, as files."""
    write_word_images(workdir / "plain", 10, alphabet=ALPHABET, seed=30)
    write_word_images(workdir / "noisy", 9, alphabet=ALPHABET, seed=31, noise=True)
    write_scene_images(workdir / "scene", 18, seed=32, alphabet=ALPHABET)
    paths = [p for folder in ("plain", "noisy", "scene") for p in sorted(find_images([workdir / folder]))
             if p.endswith(".png")]
    paths.append(str(ROOT / "docs" / "examples" / "joint.png"))
    assert len(paths) == COUNT
    return paths


def full_size_checkpoint(path, seed=32):
    """The published network (output_channel 512, 37 classes) with seeded random weights, written by
    cnnctc's checkpoint writer. He-initialised convolutions, batch norms that pass values through,
    and a head scaled so that its logits span what a trained model's do (up to about 130 here; the
    trained cnnctc/synth-scene's reach 124). Many seeds make a network that reads every image alike
    (seed 31: 'mym' for all 38); seed 32 reads 30 different texts with confidences of 0.01 to 1."""
    network = create_network()
    assert network.hidden_size == 512 and network.num_class == len(ALPHABET) + 1
    seed_weights(network, seed, head_scale=0.3)
    return save_checkpoint(network, path, metadata={"alphabet": ALPHABET})


@pytest.fixture(scope="module", params=["bundled", "full"])
def model(request, workdir, images):
    """(name, checkpoint, float32 ONNX export, int8 copy of it calibrated on a few of the images)."""
    name = request.param
    root = workdir / name
    root.mkdir()
    if name == "bundled":
        checkpoint = shutil.copyfile(get_model(SCENE_MODEL).bundled, root / "synth-scene.ckpt")
    else:
        checkpoint = full_size_checkpoint(root / "full-size.ckpt")
    onnx_path = export_model(root / "model.onnx", checkpoint=checkpoint)
    quantize_model(onnx_path, images[::9], root / "model.int8.onnx")
    return name, checkpoint, onnx_path, root / "model.int8.onnx"


@pytest.fixture(scope="module")
def readings(model, images):
    """runtime -> {batch size: (texts, confidences)} of the images, read once per model. The
    full-size network reads every third image (13, the photograph among them: a short batch at 3,
    7, 32 and 33, padded at 7 and at 32 and 33), as it reads ten times slower than the bundled one."""
    name, checkpoint, onnx_path, int8_path = model
    images = images if name == "bundled" else images[::3]
    readers = {"mindspore": lambda size: Recognizer(checkpoint, runtime="mindspore", batch_size=size),
               "onnxruntime": lambda size: Recognizer(onnx_path, batch_size=size),
               "int8": lambda size: Recognizer(int8_path, batch_size=size)}
    cache = {}

    def read(runtime):
        if runtime not in cache:
            cache[runtime] = {}
            for size in BATCH_SIZES:
                predictions = readers[runtime](size).recognize(images)
                cache[runtime][size] = ([p.text for p in predictions], np.array([p.confidence for p in predictions]))
        return cache[runtime]
    return name, read


def test_the_images_make_short_batches_that_are_padded():
    """The sizes are chosen so that the last batch is short at every size but 1, and padded at three."""
    short = {size: COUNT % size for size in BATCH_SIZES if COUNT % size}
    assert sorted(short) == [3, 7, 32, 33]
    padded = {size: (n, padded_batch_size(n, size)) for size, n in short.items() if padded_batch_size(n, size) > n}
    assert padded == {7: (3, 4), 32: (6, 8), 33: (5, 8)}


def assert_same_at_every_batch_size(read, runtime, name):
    by_size = read(runtime)
    texts, confidences = by_size[1]
    count = len(texts)
    # Real readings: words, varied (a reader that returned one text for every image, or nothing, would
    # pass the comparisons below).
    assert sum(bool(text) for text in texts) >= count - 2 and np.median([len(t) for t in texts]) >= 3, texts
    assert len(set(texts)) >= count // 3, texts
    assert 0.01 < np.median(confidences) < 1
    tolerance = CONFIDENCE_TOLERANCE[runtime]
    tolerance = tolerance[name] if isinstance(tolerance, dict) else tolerance
    for size in BATCH_SIZES[1:]:
        other_texts, other_confidences = by_size[size]
        changed = [(i, a, b) for i, (a, b) in enumerate(zip(texts, other_texts)) if a != b]
        assert not changed, f"{runtime}, {name} model: batch size {size} reads otherwise than 1: {changed}"
        assert np.abs(other_confidences - confidences).max() <= tolerance, (runtime, name, size)


def test_every_runtime_reads_the_same_at_every_batch_size_and_both_float32_runtimes_agree(readings):
    # One test per model, so that one test process reads with it (a module fixture is made once per process).
    name, read = readings
    for runtime in ("mindspore", "onnxruntime", "int8"):
        assert_same_at_every_batch_size(read, runtime, name)
    for size in BATCH_SIZES:
        mindspore_texts, mindspore_confidences = read("mindspore")[size]
        onnx_texts, onnx_confidences = read("onnxruntime")[size]
        assert mindspore_texts == onnx_texts, (name, size)
        assert np.abs(mindspore_confidences - onnx_confidences).max() <= BETWEEN_RUNTIMES, (name, size)
