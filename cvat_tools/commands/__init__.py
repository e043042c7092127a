"""One module per CLI command; cvat_tools/cli.py lists them and loads each on first use."""
