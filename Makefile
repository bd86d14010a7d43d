# Two entry points: `make test` and `make demo`. Both create .venv from the pinned constraints when missing.
# `make kaggle-check` also builds .kaggle-venv (Kaggle's image, kaggle/requirements.txt) and runs the kernel in it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
KAGGLE_VENV   ?= .kaggle-venv
KAGGLE_STAMP  := $(KAGGLE_VENV)/.installed-stamp
# Kaggle's image runs Python 3.12: use one where this machine has it, else python3.
KAGGLE_PYTHON ?= $(firstword $(wildcard /usr/bin/python3.12 /usr/local/bin/python3.12 \
                   $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3)
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test demo kaggle-check lint fix clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(KAGGLE_STAMP): kaggle/requirements.txt
	rm -rf $(KAGGLE_VENV)
	$(KAGGLE_PYTHON) -m venv $(KAGGLE_VENV)
	$(KAGGLE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(KAGGLE_VENV)/bin/python -m pip install --no-cache-dir --progress-bar off --only-binary :all: \
		-r kaggle/requirements.txt
	touch $(KAGGLE_STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n auto --dist loadfile

demo: $(STAMP)
	$(PY) scripts/demo.py

# make kaggle-check KERNEL=kernel WEIGHTS=weights: your own built kernel and the weights it was built from.
kaggle-check: $(STAMP) $(KAGGLE_STAMP)
	$(PY) scripts/kaggle_check.py --python $(KAGGLE_VENV)/bin/python \
		$(if $(KERNEL),--kernel "$(KERNEL)") $(if $(WEIGHTS),--weights "$(WEIGHTS)")

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fix: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf demo kernel/kernel.py kernel/kernel-metadata.json .pytest_cache
