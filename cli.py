"""Run splat from a checkout without installing it: `python cli.py --help`."""

from splat.cli import app

if __name__ == "__main__":
    app()
