"""The training engine and the recipe system, through the real CLI, on small subsets of the real
data: --config (a file value used, an option overriding it, an unknown key refused), Ctrl-C
(the checkpoint kept, the exact --resume command printed), resume, a refiner source with only
some of the classes, and the reproduction guard: each trainer's tiny seeded CPU run gives the
losses main gave before the engine (same config, same data)."""
from __future__ import annotations

import json
import shlex
import shutil

import pytest

from cvat_tools import labels as L
from cvat_tools.bundle import read_manifest

from cli_run import run_cli

# Losses of the runs below, recorded on main before the engine (commit a6714ef): the same
# configs and data through the Python API, one CPU thread (the weights came out bit-identical
# after the refactor too).
MAIN_CLASSIFIER = [5.5338, 6.1838]  # mean loss of epochs 1, 2
MAIN_REFINER = [(4.9373, 0.7059), (3.1965, 0.6059)]  # (cls_loss, domain_loss) of epochs 1, 2
MAIN_SEGMENTER = [  # running losses of epochs 1, 2
    {"loss_classifier": 0.7263, "loss_box_reg": 0.106, "loss_mask": 1.2226, "loss_objectness": 0.6964,
     "loss_rpn_box_reg": 0.0008},
    {"loss_classifier": 0.689, "loss_box_reg": 0.0955, "loss_mask": 0.8722, "loss_objectness": 0.6947,
     "loss_rpn_box_reg": 0.0026},
]
TOL = 2e-3  # float noise between machines; the recorded values are rounded to 4 decimals


def _recipe(path, text: str):
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def pbc_crops(pbc_dir, tmp_path_factory):
    """Six real PBC images of each of the 8 shared classes as a crops folder DIR/<class>/."""
    root = tmp_path_factory.mktemp("pbc") / "crops"
    want = {c: 6 for c in L.SHARED_CLASSES}
    for folder in sorted(pbc_dir.iterdir()):
        for f in sorted(folder.iterdir()):
            label = L.pbc_label(f.name)
            if want.get(label, 0) > 0:
                (root / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, root / label / f.name)
                want[label] -= 1
    return root


@pytest.fixture(scope="module")
def interrupted_classifier(pbc_crops, tmp_path_factory, request):
    """A classifier run from a recipe (lr overridden on the command line), Ctrl-C in the first
    step of epoch 2, then the printed --resume command. Returns (tmp, bundle, first run's result)."""
    import torch

    tmp = tmp_path_factory.mktemp("cls")
    recipe = _recipe(tmp / "cls.yaml", "epochs: 2\nsize: 32\nbatch_size: 4\nmax_steps: 2\nthreads: 1\n"
                                       "progress: false\nlr: 0.5\n")
    real, calls = torch.nn.functional.cross_entropy, []

    def cross_entropy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # epoch 2, step 1
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    try:
        first = run_cli("train", "classifier", "--config", recipe, "--data", pbc_crops, "--out", tmp / "b",
                        "--lr", "0.001")
    finally:
        mp.undo()
    return tmp, tmp / "b", first


def test_ctrl_c_keeps_the_checkpoint_and_prints_the_resume_command(interrupted_classifier):
    from cvat_tools.train.checkpoint import load_checkpoint

    tmp, bundle, (code, _, err) = interrupted_classifier
    assert code == 130, err
    line = err.strip().splitlines()[-1]
    assert "interrupted in epoch 2 of 2" in line and str(tmp / "b.ckpt" / "last.pt") in line
    command = line.split("continue with: ")[1]
    assert shlex.split(command) == ["cvat-tools", "train", "classifier", "--config", str(tmp / "cls.yaml"),
                                    "--data", shlex.split(command)[6], "--out", str(bundle), "--lr", "0.001",
                                    "--resume"]
    assert not bundle.exists()
    assert load_checkpoint(tmp / "b.ckpt" / "last.pt")["epoch"] == 1
    # the printed command, as the user would paste it, finishes the run
    code, out, err = run_cli(*shlex.split(command)[1:])
    assert code == 0, err
    assert "resumed after epoch 1" in out
    assert "held-out test (8 crops): macro-F1" in out and "accuracy" in out  # each number named


def test_recipe_values_options_override_and_resume_reproduce_main(interrupted_classifier):
    tmp, bundle, _ = interrupted_classifier
    if not bundle.exists():
        pytest.fail("the resumed run (test above) wrote no bundle")
    training = read_manifest(bundle)["training"]
    assert training["recipe"] == str(tmp / "cls.yaml")
    assert training["epochs"] == 2 and training["size"] == 32  # from the file
    assert training["lr"] == 0.001  # the option over the file's 0.5
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    # interrupted and resumed, the run gives the losses of main's uninterrupted run
    assert [h["loss"] for h in training["history"]] == pytest.approx(MAIN_CLASSIFIER, abs=TOL)


def test_refiner_from_a_recipe_reproduces_main(interrupted_classifier, pbc_crops, jtsc_dir, tmp_path):
    _, classifier, _ = interrupted_classifier
    recipe = _recipe(tmp_path / "ref.yaml", "epochs: 2\nbatch_size: 4\nmax_steps: 2\nthreads: 1\nprogress: false\n"
                                            "stain: none\nlow_res: 0.5\nstain_random: 0.5\nlr: 0.1\n")
    code, out, err = run_cli("train", "refiner", "--config", recipe, "--source", pbc_crops, "--target", jtsc_dir,
                             "--classifier", classifier, "--out", tmp_path / "r", "--lr", "0.0003")
    assert code == 0, err
    training = read_manifest(tmp_path / "r")["training"]
    assert training["lr"] == 0.0003 and training["low_res"] == 0.5 and training["recipe"] == str(recipe)
    assert training["started_from"]["kind"] == "classifier" and training["started_from"]["path"] == str(classifier)
    got = [(h["cls_loss"], h["domain_loss"]) for h in training["history"]]
    assert [x for pair in got for x in pair] == pytest.approx([x for pair in MAIN_REFINER for x in pair], abs=TOL)


def test_refiner_takes_a_source_with_some_of_the_classes(interrupted_classifier, pbc_crops, tmp_path):
    _, classifier, _ = interrupted_classifier
    some = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")  # a lab's own 4-class crops
    for name in some:
        shutil.copytree(pbc_crops / name, tmp_path / "lab" / name)
    recipe = _recipe(tmp_path / "ref.yaml", "epochs: 1\nbatch_size: 4\nmax_steps: 1\nthreads: 1\nprogress: false\n")
    args = ["train", "refiner", "--config", recipe, "--target", pbc_crops / "basophil", "--classifier", classifier]
    code, out, err = run_cli(*args, "--source", tmp_path / "lab", "--out", tmp_path / "r")
    assert code == 0, err
    missing = sorted(set(L.SHARED_CLASSES) - set(some))
    assert f"source has no crops of {', '.join(missing)}" in out
    manifest = read_manifest(tmp_path / "r")
    assert manifest["labels"] == list(L.SHARED_CLASSES)  # the label head over the full set
    assert manifest["training"]["data"]["source_missing"] == missing
    assert set(manifest["training"]["data"]["source_train_counts"]) == set(L.SHARED_CLASSES)
    # one class is not enough to learn from: refused before anything is written
    shutil.copytree(pbc_crops / "lymphocyte", tmp_path / "one" / "lymphocyte")
    code, _, err = run_cli(*args, "--source", tmp_path / "one", "--out", tmp_path / "r1")
    assert code == 2 and "at least 2" in err and "lymphocyte" in err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r1.ckpt").exists()


def test_segmenter_from_a_recipe_reproduces_main(bccd_dir, tmp_path):
    recipe = _recipe(tmp_path / "seg.yaml", "epochs: 2\nhead_epochs: 1\nlong_side: 128\nwarmup_iters: 2\n"
                                            "pretrained: false\nthreads: 1\nmax_train_images: 4\n"
                                            "max_val_images: 1\nlr: 0.3\n")
    code, out, err = run_cli("train", "segmenter", "--config", recipe, "--data", bccd_dir, "--split", "train",
                             "--val", bccd_dir, "--val-split", "val", "--out", tmp_path / "s", "--lr", "0.01")
    assert code == 0, err
    manifest = read_manifest(tmp_path / "s")
    training = manifest["training"]
    assert manifest["input_size"] == 128 and training["lr"] == 0.01 and training["recipe"] == str(recipe)
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert [json.loads(line)["epoch"] for line in out.splitlines() if line.startswith("{")] == [1, 2]
    for got, want in zip(training["history"], MAIN_SEGMENTER):
        assert got["losses"] == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize("command", ["segmenter", "classifier", "refiner"])
@pytest.mark.parametrize("text, words", [("epochs: 1\nlearning_rate: 0.1\n", ["unknown key 'learning_rate'"]),
                                         ("epochs: ten\n", ["'epochs' must be int", "ten"]),
                                         ("- epochs\n", ["a YAML mapping"])])
def test_a_bad_recipe_is_refused_naming_key_and_file(command, text, words, tmp_path):
    recipe = _recipe(tmp_path / "r.yaml", text)
    (tmp_path / "in").mkdir()
    code, out, err = run_cli("train", command, "--config", recipe, "--out", tmp_path / "b")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(recipe) in lines[0], err
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "r.yaml"]  # nothing written


def test_options_not_given_leave_the_recipe_and_missing_ones_are_named(tmp_path):
    from cvat_tools.errors import InputError
    from cvat_tools.train.recipe import resolve
    from cvat_tools.train.refiner import RefinerConfig

    recipe = _recipe(tmp_path / "r.yaml", "lr: 1e-3\nlabels: [lymphocyte, monocyte]\nsource: crops\n")
    cfg = resolve(RefinerConfig, recipe, {"targets": ["t"], "out": "o", "lr": None, "epochs": None})
    assert cfg.lr == 0.001 and cfg.labels == ("lymphocyte", "monocyte") and cfg.source.name == "crops"
    assert cfg.epochs == RefinerConfig.__dataclass_fields__["epochs"].default
    with pytest.raises(InputError, match="pass --target "):
        resolve(RefinerConfig, recipe, {"out": "o", "targets": None}, flags={"targets": "--target"})


def test_ctrl_c_before_the_first_epoch_says_there_is_nothing_to_resume(monkeypatch, tmp_path):
    import cvat_tools.train.classification as classification

    def prepare_data(cfg):
        raise KeyboardInterrupt  # Ctrl-C while the crops are cut

    monkeypatch.setattr(classification, "prepare_data", prepare_data)
    (tmp_path / "in").mkdir()
    code, _, err = run_cli("train", "classifier", "--data", tmp_path / "in", "--out", tmp_path / "b")
    assert code == 130 and err.strip().splitlines() == [
        "interrupted before the first epoch finished: no checkpoint, nothing to resume; run the command again"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_checkpoint_of_the_trainers_before_the_engine_is_refused_in_one_line(tmp_path):
    import torch

    from cvat_tools.errors import InputError
    from cvat_tools.train.checkpoint import save_checkpoint
    from cvat_tools.train.engine import Run, restore

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = Run("train refiner", tmp_path / "b", tmp_path / "b.ckpt", resume=True)
    save_checkpoint(run.last, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1,
                               "history": [], "labels": ["a"], "size": 32})  # the refiner's old layout
    with pytest.raises(InputError, match="earlier cvat-tools version") as info:
        restore(run, model, optimizer, {"labels": ["a"], "size": 32})
    assert len(str(info.value).splitlines()) == 1 and str(run.folder) in str(info.value)
