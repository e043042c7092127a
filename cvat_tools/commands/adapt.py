"""``cvat-tools adapt``: from an annotator-corrected CVAT task to a weights folder that names
this lab's cells better (issue 17).

    cvat-tools adapt ANNOTATIONS [--images DIR] --out WEIGHTS_DIR
    cvat-tools adapt --host URL --task ID [--task ID ...] --out WEIGHTS_DIR

The flow and its rules are in :mod:`cvat_tools.adapt`; the output is a complete weights folder
(segmenter/, classifier/, refiner/, adapt.json) for predict/annotate --weights, ``-p
weights=``, deploy.sh --weights and CVAT_TOOLS_WEIGHTS.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError

DEFAULT_SOURCE = Path("../shared/data/pbc")


@click.command("adapt")
@click.argument("annotations", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--images", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with the annotated images (default: the images inside the export).")
@click.option("--host", help="CVAT URL: read --task from the server (credentials as for annotate).")
@click.option("--task", "tasks", multiple=True, type=click.IntRange(min=1), help="Task ID; repeatable.")
@click.option("--timeout", type=click.FloatRange(1.0, 3600.0), default=60.0, show_default=True,
              help="Seconds to wait for each answer of the CVAT server.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Weights folder to write (new, empty, or an earlier adapt output).")
@click.option("--weights", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Weights folder to start from (default: the shipped bundles).")
@click.option("--source", type=click.Path(path_type=Path), default=DEFAULT_SOURCE, show_default=True,
              help="PBC folder: the labelled source kept so the other classes are not forgotten.")
@click.option("--label-map", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML/JSON: label in the file -> project label (or null to leave it out).")
@click.option("--include-auto", is_flag=True, help="Count untouched auto (pre-label) shapes as corrections.")
@click.option("--force", is_flag=True, help="Write the result even when it scores lower than its parent.")
@click.option("--steps", type=click.IntRange(1), default=100, show_default=True,
              help="Refiner training steps (32 PBC + 32 lab crops each).")
@click.option("--batch-size", type=click.IntRange(2), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of a class's source draws given to the lab's corrections.")
@click.option("--seed", type=int, default=0, show_default=True, help="Hold-out split and training seed.")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path),
              help="PBC crop cache .npz, reused by later runs (saves ~1.5 min each).")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--segmenter", "train_segmenter", is_flag=True,
              help="Also fine-tune the segmenter on the corrected masks (not built yet: refused).")
def adapt(annotations, images, host, tasks, timeout, out, weights, source, label_map, include_auto, force,
          steps, batch_size, lr, share, seed, cache, threads, train_segmenter):
    """Learn from the annotators' corrections: retrain the refiner on the lab's corrected cells,
    check it on 20 % of them held out, and write a complete weights folder."""
    from ..adapt.run import AdaptOptions, run_adapt
    from ..adapt.training import AdaptRecipe
    from ..formats.labelmap import load_label_map
    from ..outdir import check_out

    if train_segmenter:
        raise InputError("--segmenter: fine-tuning the segmenter on corrected masks is not built yet; "
                         "adapt retrains the refiner (train the segmenter with 'cvat-tools train "
                         "segmenter --data EXPORT --init ...')")
    if (annotations is None) == (host is None):
        raise InputError("give ANNOTATIONS (a file, folder or CVAT export .zip) or --host URL --task ID, "
                         "not both")
    if host is not None and not tasks:
        raise InputError("--host needs at least one --task ID")
    if tasks and host is None:
        raise InputError("--task needs --host URL (the CVAT server)")
    inputs = [p for p in (annotations, images, weights, source, cache) if p is not None]
    check_out(out, "adapt", inputs=inputs)
    if not Path(source).is_dir():
        raise InputError(f"--source {source}: no such folder; pass the PBC folder (basophil/, ig/, ...)")
    mapping = load_label_map(label_map) if label_map else None
    options = AdaptOptions(out=out, weights=weights, include_auto=include_auto, force=force, seed=seed,
                           recipe=AdaptRecipe(source=source, steps=steps, batch_size=batch_size, lr=lr,
                                              share=share, seed=seed, threads=threads, cache=cache),
                           echo=click.echo)
    if host is None:
        from ..adapt.frames import open_file_input
        from ..adapt.run import file_sha256

        options.inputs = {"annotations": str(annotations), "sha256": file_sha256(annotations),
                          "images": str(images) if images else None,
                          "label_map": str(label_map) if label_map else None}
        with open_file_input(annotations, images, mapping) as (dataset, frames, folder):
            record = run_adapt(dataset, frames, options, str(annotations), str(folder))
    else:
        from ..adapt.cvat_task import open_task_input

        with open_task_input(host, list(tasks), timeout, mapping) as (dataset, frames, where):
            options.inputs = {"host": where, "tasks": list(tasks),
                              "label_map": str(label_map) if label_map else None}
            record = run_adapt(dataset, frames, options, where, where)
    after = record["metrics"]["held_out_after"]["macro_f1"]
    click.echo(f"wrote {out} (held-out macro-F1 {record['metrics']['held_out_before']['macro_f1']:.3f} "
               f"-> {after:.3f}{', forced' if record['forced'] else ''}; {record['seconds']:.0f} s)")
