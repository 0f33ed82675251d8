# splat: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch: an unpinned torch would pull several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test setup browser encoder training-packages bench-speed bench-quality bench-encoder clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The report's browser tests drive Debian's chromium through its chromedriver; install them when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver)

demo: $(STAMP)
	$(BIN)/splat fit examples/piano.wav --force
	$(BIN)/splat info examples/piano.atoms.json
	$(BIN)/splat plot examples/piano.atoms.json --audio examples/piano.wav -o examples/piano.atoms.png --force
	$(BIN)/splat render examples/piano.atoms.json -o examples/piano.render.wav --force
	$(BIN)/python examples/edit_atoms.py
	$(BIN)/splat edit examples/piano.atoms.json -o examples/piano.up.atoms.json --where "rank == 0" --transpose 12 --force
	$(BIN)/splat render examples/piano.up.atoms.json -o examples/piano.up.wav --force
	$(BIN)/splat edit examples/piano.atoms.json -o examples/piano.half.atoms.json --where "rank >= n_atoms / 2" --drop --force
	$(BIN)/splat render examples/piano.half.atoms.json -o examples/piano.half.wav --force
	$(BIN)/splat render examples/piano.atoms.json -o examples/piano.render.wav --stems examples/piano.stems \
		--residual examples/piano.wav --force
	$(BIN)/splat report examples/piano.wav --atoms examples/piano.atoms.json -o examples/piano.report.html --force

test: $(STAMP) browser
	$(BIN)/ruff check splat tests benchmarks examples cli.py
	$(BIN)/python -m pytest

# Debian packages the encoder's training data is rendered with (fluidsynth and the allowed soundfonts only).
TRAINING_PACKAGES := fluidsynth csound-soundfont opl3-soundfont
training-packages:
	dpkg -s $(TRAINING_PACKAGES) >/dev/null 2>&1 || (apt-get update && apt-get install -y $(TRAINING_PACKAGES))

# Rebuild the shipped encoder weights: generate the training set (build/encoder-data) and train.
encoder: $(STAMP) training-packages
	$(BIN)/splat encoder train -o splat/weights/encoder.pt --force

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/speed.py

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py

bench-encoder: $(STAMP)
	$(BIN)/python benchmarks/encoder.py

clean:
	rm -rf $(VENV) build *.egg-info
