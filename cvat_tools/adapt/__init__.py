"""Learning from annotators' corrections (``cvat-tools adapt``, issue 17).

    annotations (file, export .zip or a CVAT task)
      -> corrections.select: the shapes an annotator drew or edited, with a known label
      -> cutting.cut_cells: one masked crop per cell (boxes: the segmenter's mask inside the box)
      -> holdout.split: 20 % of each class held out (stratified, seeded, recorded)
      -> training.train_refiner_on: the parent refiner continued on PBC + the lab's cells
      -> scoring.score_cells: before/after macro-F1 on the held-out cells; worse is refused
      -> bundle folder segmenter/ classifier/ refiner/ + adapt.json (provenance)
"""
