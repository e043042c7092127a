"""Stage 2 and 3: name each cell (classifier) and refine across labs (DANN refiner)."""
