# The two commands of the README. Both set up .venv from nothing (torch pinned first: an unpinned torch pulls
# a multi-GB CUDA build), and run offline by default: HF_HUB_OFFLINE=0 make book lets chapters use the hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qbook-installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test setup clean browser

book: $(STAMP)
	$(BIN)/jupyter-book build --all --warningiserror --keep-going .
	@echo "Book built: open _build/html/index.html"

test: $(STAMP) browser
	$(BIN)/python -m pytest tests chapters --nbval-lax -p no:cacheprovider

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (qbook)"
	touch $(STAMP)

# The browser test opens the built book in Debian's headless Chromium; installed here when missing and we are root
# (as on CI), else the test skips saying why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "could not install chromium and chromium-driver: the browser test will skip"; \
	  else echo "chromium/chromedriver missing and not root: the browser test will skip"; fi; \
	fi

clean:
	rm -rf _build
