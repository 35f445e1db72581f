# greenserve developer commands. `make demo` and `make test` are the README's two commands.
.PHONY: demo test unit cluster-up cluster-down lint crd bench images

demo:            ## local control plane + operator + example ModelService becoming Ready
	bash tests/harness/demo.sh

test:            ## lint, type-check, unit and integration tests (starts and stops the control plane)
	bash tests/run.sh

unit:            ## unit tests only, no control plane
	$$(bash tests/harness/venv.sh)/bin/python -m pytest tests -m "not integration and not e2e and not gpu and not realnode"

cluster-up:
	bash tests/harness/cluster.sh up

cluster-down:
	bash tests/harness/cluster.sh down

lint:
	V=$$(bash tests/harness/venv.sh); $$V/bin/ruff check . && $$V/bin/ruff format --check . && $$V/bin/mypy && PYTHONPATH=operator:serving-image $$V/bin/lint-imports

images:          ## operator image + serving image (CPU test variant) as OCI archives in ~/.cache/greenserve/images
	bash tests/harness/images.sh

crd:             ## regenerate crds/ from the API types
	$$(bash tests/harness/venv.sh)/bin/python -m greenserve.api.crdgen

bench:           ## policy benchmark against the peers' policies (simulated energy)
	$$(bash tests/harness/venv.sh)/bin/python -m greenserve bench
