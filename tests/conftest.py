"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere.

One persistent JAX compilation cache serves the whole session, in this process and in every
`python -m vrl.main` it starts: many tests train the same tiny recipes, and only the first
compile of each step is paid for (a cache hit gives the same executable).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="vrl-test-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

from tests import gcs  # noqa: E402 - points every GCS client at the emulator before any is imported

gcs.configure_environment()

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_num_cpu_devices", int(os.environ["JAX_NUM_CPU_DEVICES"]))

# Grain worker processes read absl flags; pytest does not parse them.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def gcs_server():
    """The in-process Cloud Storage emulator (one per session: gcsfs caches its clients)."""
    server = gcs.start()
    yield server
    server.stop()


@pytest.fixture
def gcs_dir(gcs_server, request):
    """A fresh gs:// folder in the emulator's bucket for one test."""
    return gcs.fresh_folder(request.node.name)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
