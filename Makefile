# Two commands on a fresh machine:
#   make run    install everything into .venv/ and tag the demo library with config/tagger.yaml
#   make test   install everything into .venv/ and run the whole test suite
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install image clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml scripts/install.sh tagger/engine/_resample.c
	scripts/install.sh $(VENV)
	touch $(STAMP)

run: $(STAMP)
	@test -d photos || $(PY) scripts/sample_photos.py photos
	$(VENV)/bin/tagger weights
	$(VENV)/bin/tagger scan
	$(VENV)/bin/tagger stats

test: $(STAMP)
	scripts/install-system-deps.sh
	$(VENV)/bin/pytest

# The container image tagger:latest, with podman or docker (scripts/build-image.sh; compose.yaml runs it).
image:
	scripts/build-image.sh

clean:
	rm -rf $(VENV) var photos
