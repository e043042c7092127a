"""Networks and how bundles become models: backbones, the Pipeline's seams, kind -> loader."""
