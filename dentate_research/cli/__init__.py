"""Command-line edge of the project. Hydra and argparse live only here; the library is usable without them."""
