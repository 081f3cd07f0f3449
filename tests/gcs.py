"""A local Cloud Storage emulator for the gs:// tests (gcp-storage-emulator, in-process).

The clients (gcsfs, tensorstore behind Orbax, ArrayRecord's own C++ client, tensorboardX) read
where to connect from the environment when they are first imported, so `configure_environment`
runs from conftest before anything imports them, and child processes inherit it. The server
itself starts only when a test asks for it (the `gcs_server` / `gcs_dir` fixtures).
"""

import contextlib
import logging
import os
import re
import socket
import uuid

import pytest

BUCKET = "vrl-test"
_PORT_VAR = "VRL_TEST_GCS_PORT"


def available() -> str | None:
    """None when the emulator can run here; otherwise why not (the skip reason)."""
    try:
        import gcp_storage_emulator.server  # noqa: F401, PLC0415
        import gcsfs  # noqa: F401, PLC0415
    except ImportError as e:
        return f"Cloud Storage emulator tests need gcp-storage-emulator and gcsfs ({e})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure_environment() -> None:
    """Points every GCS client at http://127.0.0.1:PORT (a port chosen once per session)."""
    if available() is not None:
        return
    # Without credentials gcsfs cannot ask the emulator for a bucket's type and says so on
    # every access before it falls back to plain Cloud Storage: expected here.
    logging.getLogger("gcsfs").setLevel(logging.ERROR)
    port = os.environ.setdefault(_PORT_VAR, str(_free_port()))
    url = f"http://127.0.0.1:{port}"
    for name, value in {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else a 60 s gRPC probe per bucket
        "NO_GCE_CHECK": "true",
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (Orbax's arrays)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # ArrayRecord's client: without it Grain hangs
    }.items():
        os.environ[name] = value


def _patch_downloads() -> None:
    """Makes the emulator's media downloads behave as Cloud Storage's do:
    - they carry x-goog-generation: tensorstore (Orbax's arrays) reads an object's generation
      there, and without it fails to update OCDBT's manifest ("Malformed StorageGeneration");
    - `Range: bytes=-N` gives the last N bytes (the emulator sends the whole object): ArrayRecord
      reads a file's end that way, and files over about 1 MB fail to read without it."""
    from gcp_storage_emulator import server  # noqa: PLC0415
    from gcp_storage_emulator.handlers import objects  # noqa: PLC0415

    original = objects.download
    if getattr(original, "patched", False):
        return

    def download(request, response, storage, *args, **kwargs):
        name = request.params["bucket_name"], request.params["object_id"]
        suffix = re.fullmatch(r"\s*bytes=-(\d+)", request.get_header("range", "") or "")
        if suffix:
            with contextlib.suppress(Exception):  # no such object: the original handler answers
                start = max(len(storage.get_file(*name)) - int(suffix[1]), 0)
                request._request_handler.headers.replace_header("Range", f"bytes={start}-")
        original(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(*name)
        except Exception:  # noqa: BLE001 - no such object: the original handler answered
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", 1))

    download.patched = True
    objects.download = download  # `get` with alt=media calls it by name
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler is original:
                handlers[method] = download


def start():
    """Starts the emulator with the test bucket; skips the test when it cannot run."""
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    from gcp_storage_emulator.server import create_server  # noqa: PLC0415

    server = create_server(
        "127.0.0.1", int(os.environ[_PORT_VAR]), in_memory=True, default_bucket=BUCKET
    )
    _patch_downloads()
    server.start()
    return server


def fresh_folder(name: str) -> str:
    """gs://vrl-test/<name>-<random>: a folder no other test uses."""
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", name)[:60]
    return f"gs://{BUCKET}/{slug}-{uuid.uuid4().hex[:8]}"
