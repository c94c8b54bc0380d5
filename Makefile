# Two commands: `make run` (the experiment on ChestMNIST) and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PHANTOM := data/phantom

.PHONY: install run demo pneumonia test browser postgres clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and exactly pinned, so no dependency can pull another (multi-GB) build
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,tracking,distributed]"
	touch $(STAMP)

install: $(STAMP)

# The experiment: the three models on the official ChestMNIST file (downloaded when missing).
run: $(STAMP)
	$(BIN)/cxrlab compare --download --score-test --out runs/compare

# The same study on phantom data (synthetic; official split sizes): 3 epochs, 2 seeds, 4-view TTA, fitted
# ensemble. Youden threshold on val, since 3 epochs leave MobileNetV3 probabilities on one side of 0.5 (README).
demo: $(STAMP)
	test -f $(PHANTOM)/chestmnist.npz || $(BIN)/cxrlab phantom --out $(PHANTOM) --official-counts
	$(BIN)/cxrlab compare --data-root $(PHANTOM) --epochs 3 --seeds 0 1 --tta 4 --threshold youden --score-test --out runs/demo

# The real-data study of docs/results/pneumoniamnist-28 (PneumoniaMNIST, downloaded to ~/.medmnist when missing) at
# cxrlab's defaults: the three models x 5 seeds, each seed holding out its fold of a 5-fold split of train for its best
# epoch and operating point, early stopping, 4-view TTA, equal-weight ensemble, the refer band; two runs at a time, one
# thread each; test sealed until every choice is written, then scored once. Hours on 2 CPU cores: rerun after an
# interruption (it resumes); `cxrlab status runs/pneumoniamnist-28`.
pneumonia: $(STAMP)
	$(BIN)/cxrlab compare --dataset pneumoniamnist --download --holdout 5 --seeds 0 1 2 3 4 --workers 2 --threads 1 --out runs/pneumoniamnist-28
	$(BIN)/cxrlab score runs/pneumoniamnist-28

# ruff first (seconds): the lint rules and the formatting of pyproject.toml, then the suite.
test: $(STAMP) browser postgres
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	CXRLAB_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q

# The browser test drives Debian's chromium with Playwright (Playwright's own browser download does not work here).
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# PostgreSQL for the shared-study tests: each starts a throwaway server of its own (tests/test_shared.py).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing Debian's postgresql for the shared-study tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }

clean:
	rm -rf $(VENV) runs/demo $(PHANTOM) .pytest_cache
