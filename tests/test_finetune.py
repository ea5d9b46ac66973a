"""Fine-tuning, resuming, evaluation and prediction end to end on rendered words (real MindSpore)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import NARROW, subprocess_env
from cnnctc.checkpoint import read_checkpoint
from cnnctc.cli import main
from cnnctc.data import make_lmdb, write_lmdb
from cnnctc.evaluation import edit_distance, evaluate
from cnnctc.registry import load_manifest
from cnnctc.network import CNNCTC
from cnnctc.recognizer import Recognizer
from cnnctc.render import find_fonts, render_word, write_word_images
from cnnctc.training import TRAIN_STATE_KEY, TrainConfig, finetune, init_from_pretrained

DIGITS = "0123456789"
CASED = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
ONE_FONT = (find_fonts() or [None])[:1]
TRAIN_IMAGES, BATCH = 800, 16
TOTAL_STEPS, SAVE_EVERY, INTERRUPT_AT = 60, 15, 31   # an epoch is 50 steps; 31 is one past a save
LAST_SAVED = INTERRUPT_AT // SAVE_EVERY * SAVE_EVERY  # the newest checkpoint the interrupted run left


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Rendered digit strings in one font: TRAIN_IMAGES for training, 100 for validation, as LMDBs."""
    root = tmp_path_factory.mktemp("digits")
    write_word_images(root / "train_images", TRAIN_IMAGES, alphabet=DIGITS, fonts=ONE_FONT, seed=1)
    write_word_images(root / "valid_images", 100, alphabet=DIGITS, fonts=ONE_FONT, seed=2)
    make_lmdb(root / "train_images", root / "train_images" / "labels.tsv", root / "train")
    make_lmdb(root / "valid_images", root / "valid_images" / "labels.tsv", root / "valid")
    return root


@pytest.fixture(scope="session")
def trained(digits):
    """The bundled model fine-tuned to digits (a new head), interrupted at step INTERRUPT_AT and resumed
    to TOTAL_STEPS. From random weights, 160 steps reached 90% on one CPU and 9% on another."""
    out = digits / "run"
    config = TrainConfig(alphabet=DIGITS, steps=TOTAL_STEPS, batch_size=BATCH, lr=2e-3, output_channel=64,
                         save_every=SAVE_EVERY, log_every=1000)
    first_run = []

    def interrupt(step, loss):
        first_run.append(step)
        if step == INTERRUPT_AT:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    with pytest.raises(KeyboardInterrupt):
        finetune(digits / "train", digits / "valid", out, pretrained="cnnctc/mini-synth", config=config,
                 on_step=interrupt)
    left_behind = sorted(p.name for p in out.glob("cnnctc-*.ckpt"))
    state_at_last_save = json.loads(read_checkpoint(out / f"cnnctc-{LAST_SAVED:07d}.ckpt")[TRAIN_STATE_KEY])
    resumed = []
    result = finetune(digits / "train", digits / "valid", out, resume=out,
                      config=TrainConfig(log_every=1000, save_every=SAVE_EVERY),
                      on_step=lambda step, loss: resumed.append(step))
    return types.SimpleNamespace(result=result, first_run=first_run, resumed=resumed, left_behind=left_behind,
                                 state_at_last_save=state_at_last_save, out=out, root=digits)


def labels_of(folder):
    return dict(line.split("\t") for line in (folder / "labels.tsv").read_text().splitlines())


def test_validation_accuracy_goes_from_chance_to_high(trained):
    untrained = CNNCTC(num_class=len(DIGITS) + 1, output_channel=64)
    digits_manifest = load_manifest().replace(alphabet=DIGITS)
    _, before = evaluate(Recognizer(network=untrained, manifest=digits_manifest, batch_size=50),
                         [trained.root / "valid"])
    assert before.kept == 100 and before.accuracy <= 5.0
    result = trained.result
    assert result.best_accuracy >= 90.0, result.history
    assert [entry["step"] for entry in result.history] == [TRAIN_IMAGES // BATCH, TOTAL_STEPS]   # each epoch, and the end
    assert result.best_accuracy == max(entry["accuracy"] for entry in result.history)
    assert result.best_checkpoint.name == "best.ckpt"
    assert read_checkpoint(result.best_checkpoint)["alphabet"] == DIGITS


def test_interrupted_run_resumes_from_its_last_checkpoint(trained):
    assert trained.first_run == list(range(1, INTERRUPT_AT + 1))
    assert trained.left_behind == [f"cnnctc-{LAST_SAVED - SAVE_EVERY:07d}.ckpt", f"cnnctc-{LAST_SAVED:07d}.ckpt"]
    assert trained.resumed == list(range(LAST_SAVED + 1, TOTAL_STEPS + 1))  # the same step, not from 0
    assert trained.result.steps == TOTAL_STEPS
    final = read_checkpoint(trained.result.last_checkpoint)
    assert trained.result.last_checkpoint.name == f"cnnctc-{TOTAL_STEPS:07d}.ckpt"
    # Optimizer state came back too: its step counter went on from LAST_SAVED, and the hub's layout holds.
    assert int(final["global_step"].asnumpy().reshape(-1)[0]) == TOTAL_STEPS
    assert {"moment.Prediction.weight", "mean_square.Prediction.weight", "mean_grad.Prediction.weight"} <= set(final)
    state = json.loads(final[TRAIN_STATE_KEY])
    assert state["step"] == TOTAL_STEPS and state["config"]["alphabet"] == DIGITS
    steps_per_epoch = TRAIN_IMAGES // BATCH
    saved = trained.state_at_last_save
    assert (saved["epoch"], saved["epoch_step"]) == divmod(LAST_SAVED, steps_per_epoch)
    kept = sorted(p.name for p in trained.out.glob("cnnctc-*.ckpt"))
    assert kept == [f"cnnctc-{TOTAL_STEPS - SAVE_EVERY:07d}.ckpt", f"cnnctc-{TOTAL_STEPS:07d}.ckpt"]
    # The resumed run's lineage goes on from the run's own: still from the bundled model, now at step TOTAL_STEPS.
    lineage = json.loads(final["cnnctc_lineage"])
    start = lineage["started_from"]
    assert (start["kind"], start["uid"]) == ("model", "cnnctc/mini-synth") and lineage["trained_on"]["steps"] == TOTAL_STEPS
    assert lineage["trained_on"]["planned_steps"] == TOTAL_STEPS and lineage["trained_on"]["seed"] == 1
    assert lineage["measured"]["best_accuracy"] == trained.result.best_accuracy


def test_a_finished_run_is_not_overwritten(trained):
    before = sorted(p.name for p in trained.out.iterdir())
    run = run_cli("finetune", "--train", trained.root / "train", "--out", trained.out, "--pretrained", "none",
                  "--alphabet", DIGITS, "--steps", 1, "--batch-size", 4, "--output-channel", 64)
    assert run.returncode == 1 and f"already holds a run, finished at step {TOTAL_STEPS}" in run.stderr
    assert sorted(p.name for p in trained.out.iterdir()) == before


def run_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=600)


def test_predict_reads_rendered_words_back_and_reports_bad_files(trained, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(trained.root / "valid_images", folder)
    truth = labels_of(folder)
    (folder / "labels.tsv").unlink()
    good = (folder / "00000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, and not named like one: not an input")
    (folder / "fake.jpg").write_text("named like an image, but text")
    run = run_cli("predict", folder, "--checkpoint", trained.result.best_checkpoint, "--format", "tsv",
                  "--batch-size", "16")
    assert run.returncode == 1
    rows = [line.split("\t") for line in run.stdout.splitlines()]
    assert len(rows) == 100
    correct = sum(truth[os.path.basename(path)] == text for path, text, _ in rows)
    assert correct >= 90, rows[:10]  # the saved alphabet was used: the checkpoint has 11 classes
    assert all(0.0 <= float(confidence) <= 1.0 for _, _, confidence in rows)
    errors = [line for line in run.stderr.splitlines() if line.startswith("cnnctc: error:")]
    assert sorted(os.path.basename(line.split(":")[2].strip()) for line in errors) == \
        ["fake.jpg", "truncated.png", "zero.png"]
    assert "3 of 103 inputs could not be read" in run.stderr

    one = run_cli("predict", folder / "00001.png", "--checkpoint", trained.result.best_checkpoint,
                  "--format", "json")
    assert one.returncode == 0
    record = json.loads(one.stdout)
    assert record["text"] == truth["00001.png"] and len(record["chars"]) == len(record["text"])
    assert record["confidence"] == pytest.approx(np.prod([p for _, p in record["chars"]]), rel=1e-4)


def test_a_lexicon_holding_the_truth_is_never_less_accurate_than_greedy(trained):
    import random
    truth = sorted(set(labels_of(trained.root / "valid_images").values()))
    rng = random.Random(0)
    words = set(truth) | {"".join(rng.choice(DIGITS) for _ in range(rng.randint(2, 8))) for _ in range(3000)}
    greedy = Recognizer(trained.result.best_checkpoint, batch_size=32)
    lexicon = Recognizer(trained.result.best_checkpoint, batch_size=32, decoder_options={"lexicon": sorted(words)})
    _, with_greedy = evaluate(greedy, [trained.root / "valid"])
    _, with_lexicon = evaluate(lexicon, [trained.root / "valid"])
    assert with_lexicon.kept == with_greedy.kept == 100
    assert with_lexicon.accuracy >= with_greedy.accuracy and with_greedy.accuracy >= 80


def test_recognizer_reads_words_of_any_width(trained):
    reader = Recognizer(trained.result.best_checkpoint, batch_size=8)
    words = ["7", "42", "1234567", "90817263"]
    images = [render_word(w, font=ONE_FONT[0]) for w in words]
    predictions = reader.recognize(images * 3)  # 12 images: a full batch and a padded one
    assert [p.text for p in predictions] == words * 3
    assert predictions[0] == reader.recognize(images[:1])[0] or \
        abs(predictions[0].confidence - reader.recognize(images[:1])[0].confidence) < 1e-4


def test_eval_on_an_lmdb_whose_accuracy_is_known(trained, tmp_path):
    reader = Recognizer(trained.result.best_checkpoint, batch_size=16)
    folder = trained.root / "valid_images"
    names = sorted(labels_of(folder))[:40]
    predicted = [p.text for p in reader.recognize([folder / n for n in names])]
    samples, expected_correct, expected_ned = [], 0, 0.0
    for i, (name, text) in enumerate(zip(names, predicted)):
        assert text, "a rendered digit string was read as nothing"
        if i % 4 == 0:  # every fourth label differs from what the model reads in one character
            label = text[:-1] + str((int(text[-1]) + 1) % 10)
            expected_ned += 1 - 1 / len(text)
        else:
            label = text
            expected_correct += 1
            expected_ned += 1
        samples.append(((folder / name).read_bytes(), label))
    samples += [((folder / names[0]).read_bytes(), "12a"),          # outside the alphabet: skipped
                ((folder / names[0]).read_bytes(), "1" * 14),       # longer than 13: skipped
                (b"corrupt image", "123")]                          # unreadable: counted, wrong
    # The zoo's protocol scores an unreadable image as a black one against '[dummy_label]'.
    black = reader.recognize([Image.new("RGB", (100, 32))])[0].text
    expected_ned += 1 - edit_distance(black, "[dummy_label]") / max(len(black), 13)
    write_lmdb(tmp_path / "known", samples)
    run = run_cli("eval", "--checkpoint", trained.result.best_checkpoint, "--data", tmp_path / "known", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    [known] = report["datasets"]
    assert (known["kept"], known["skipped"], known["correct"]) == (41, 2, expected_correct)
    assert known["accuracy"] == pytest.approx(100 * expected_correct / 41)
    assert known["norm_ed"] == pytest.approx(expected_ned / 41, abs=1e-6)
    table = run_cli("eval", "--checkpoint", trained.result.best_checkpoint, "--data", tmp_path / "known",
                    trained.root / "valid")
    assert table.returncode == 0
    assert "known" in table.stdout and "valid" in table.stdout and "total" in table.stdout
    assert f"{100 * expected_correct / 41:.2f}" in table.stdout


def test_new_cased_alphabet_keeps_the_hub_backbone(tmp_path, narrow_checkpoint, capsys):
    source, written = narrow_checkpoint  # official names, 37 classes, optimizer state
    net = CNNCTC(num_class=len(CASED) + 1, output_channel=NARROW)
    init_from_pretrained(net, source, load_manifest(), CASED)
    got = {p.name: p.asnumpy() for p in net.get_parameters()}
    backbone = [n for n in written if not n.startswith("Prediction.")]
    assert all(np.array_equal(got[n], written[n].astype(np.float32)) for n in backbone)
    assert got["Prediction.weight"].shape == (63, NARROW) and written["Prediction.weight"].shape == (37, NARROW)

    words = ["Hello", "WORLD", "MindSpore", "cnnCTC", "Zebra42"] * 4
    labels = write_word_images(tmp_path / "images", words=words, fonts=ONE_FONT)
    make_lmdb(tmp_path / "images", labels, tmp_path / "cased")
    capsys.readouterr()   # in-process: the command's behaviour is the point, not a new process's
    code = main([*map(str, ("finetune", "--train", tmp_path / "cased", "--out", tmp_path / "out", "--pretrained",
                            source, "--alphabet", CASED, "--steps", 2, "--batch-size", 4, "--output-channel", NARROW))])
    assert code == 0, capsys.readouterr().err[-3000:]
    checkpoint = tmp_path / "out" / "cnnctc-0000002.ckpt"
    assert read_checkpoint(checkpoint)["alphabet"] == CASED
    reader = Recognizer(checkpoint, runtime="mindspore")   # the Cell itself is asked for
    assert reader.alphabet == CASED and reader.network.num_class == 63
    capsys.readouterr()
    code = main(["predict", str(tmp_path / "images" / "00000.png"), "--checkpoint", str(checkpoint),
                 "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert set(json.loads(out)["text"]) <= set(CASED)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_worker_msrun_on_localhost(digits, tmp_path):
    bin_dir = Path(sys.executable).parent
    msrun = shutil.which("msrun", path=str(bin_dir)) or shutil.which("msrun")
    if msrun is None:
        pytest.fail("msrun (installed with mindspore) is not on PATH")
    env = subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    # The README's form uses the installed console script; a source checkout runs the package's file.
    script = shutil.which("cnnctc", path=str(bin_dir)) or str(Path(__file__).parent.parent / "cnnctc" / "__main__.py")
    logs, out = tmp_path / "logs", tmp_path / "out"
    run = subprocess.run([msrun, "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
                          f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True", "--cluster_time_out=120",
                          script, "finetune", "--train", str(digits / "train"), "--valid", str(digits / "valid"),
                          "--out", str(out),
                          "--pretrained", "none", "--alphabet", DIGITS, "--steps", "3", "--batch-size", "4",
                          "--output-channel", "32", "--log-every", "1"],
                         env=env, capture_output=True, text=True, timeout=400)
    worker_logs = {p.name: p.read_text(errors="replace") for p in logs.glob("worker_*.log")}
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:], worker_logs)
    assert sorted(worker_logs) == ["worker_0.log", "worker_1.log"]
    digests = {}
    for name, text in worker_logs.items():
        assert "batch 4 x 2 ranks" in text
        assert all(f"step {s}/3" in text for s in (1, 2, 3)), text[-2000:]
        digests[name] = text.split("weights digest ")[1].split()[0]
    # Different shards, identical weights afterwards: the gradients were averaged across ranks.
    assert digests["worker_0.log"] == digests["worker_1.log"]
    # rank 0 alone writes, and validates alone (reading under msrun would look for a relay)
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "cnnctc-0000003.ckpt"]
    trained_on = json.loads(read_checkpoint(out / "cnnctc-0000003.ckpt")["cnnctc_lineage"])["trained_on"]
    assert (trained_on["workers"], trained_on["batch_size"], trained_on["steps"]) == (2, 4, 3)
