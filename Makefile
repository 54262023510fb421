# Two commands do everything on a fresh Debian machine:
#   make up     set up, build the images, bring up the example site
#   make test   set up and run the whole suite (unit, real engine, real hub, browser)
VENV ?= .venv
PY := $(VENV)/bin/python
SITE ?= config/example/site.yaml
# The swarm spawn benchmark's own site (orchestrator: swarm), brought up and down by `make bench`.
SWARM_SITE ?= config/example/site-swarm.yaml

.PHONY: setup host host-test up down test unit bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

host:
	scripts/host-setup.sh

host-test:
	scripts/host-setup.sh --test

setup: $(VENV)/.installed host

up: setup
	$(VENV)/bin/hubdeploy --site $(SITE) up

down: setup
	$(VENV)/bin/hubdeploy --site $(SITE) down

# The smoke client's own tests run a hub on loopback that starts its own proxy.
CHP := build/chp/node_modules/.bin/configurable-http-proxy
$(CHP):
	npm install --silent --no-audit --no-fund --prefix build/chp configurable-http-proxy@4

test: $(VENV)/.installed host-test $(CHP)
	HUBDEPLOY_TEST_CHP=$(CURDIR)/$(CHP) $(VENV)/bin/pytest -ra --durations=15

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -ra tests/unit

# The spawn benchmarks need the site SITE up (`make up`); the swarm one brings its own site
# SWARM_SITE up and down, and needs this engine to be a swarm manager (on a machine of your
# own: `docker swarm init --advertise-addr 127.0.0.1`): nothing here makes or leaves a swarm.
bench: setup
	$(PY) benchmarks/spawn_latency.py
	$(PY) benchmarks/compute_spawn_latency.py
	$(PY) benchmarks/spawn_storm.py --site $(SITE)
	$(VENV)/bin/hubdeploy --site $(SWARM_SITE) up
	$(PY) benchmarks/swarm_spawn_latency.py --site $(SWARM_SITE); rc=$$?; \
	$(VENV)/bin/hubdeploy --site $(SWARM_SITE) down; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
