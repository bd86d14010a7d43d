"""Plant an encoder's pretrained weights where smp's loader reads them, without a network.

smp 0.6 loads `smp-hub/<encoder>.<weights>` at the revision pinned in its encoder table through
`hf_hub_download`, which offline reads
`$HF_HOME/hub/models--smp-hub--<encoder>.<weights>/snapshots/<revision>/` (`config.json` with the
preprocessing, `model.safetensors` with the encoder's state dict). `serve_hub` stands in for huggingface.co on
127.0.0.1, so the online path (download once, then the cache) runs with the real client and no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from segmentation_models_pytorch.encoders import encoders as smp_table
from segmentation_models_pytorch.encoders import get_encoder
from torch import Tensor, nn

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def snapshot_dir(hf_home: Path, encoder: str, weights: str) -> Path:
    settings = smp_table[encoder]["pretrained_settings"][weights]
    repo = "models--" + settings["repo_id"].replace("/", "--")
    return hf_home / "hub" / repo / "snapshots" / settings["revision"]


def distinctive_state(encoder: str, seed: int) -> dict[str, Tensor]:
    """The encoder's state dict, seeded random values everywhere, batch norms included (no default 0/1)."""
    torch.manual_seed(seed)
    module = get_encoder(encoder)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return {k: v.clone().contiguous() for k, v in module.state_dict().items()}


def plant(
    hf_home: Path, encoder: str, weights: str, mean: tuple, std: tuple, seed: int = 1234
) -> dict[str, Tensor]:
    """Write a snapshot of `encoder`'s `weights` under `hf_home`; returns the planted state dict."""
    folder = snapshot_dir(hf_home, encoder, weights)
    folder.mkdir(parents=True, exist_ok=True)
    state = distinctive_state(encoder, seed)
    save_file(state, str(folder / "model.safetensors"))
    config = {"mean": list(mean), "std": list(std), "input_space": "RGB", "input_range": [0, 1]}
    (folder / "config.json").write_text(json.dumps(config))
    return state


@contextlib.contextmanager
def serve_hub(hf_home: Path, encoder: str, weights: str) -> Iterator[tuple[str, list[str]]]:
    """Serve a planted snapshot the way huggingface.co does (`HEAD`/`GET /<repo>/resolve/<revision>/<file>`
    with the headers huggingface_hub reads: X-Repo-Commit, ETag, Content-Length) on a free local port.

    Yields:
        (endpoint URL for `HF_ENDPOINT`, the log of requests, "METHOD path").
    """
    settings = smp_table[encoder]["pretrained_settings"][weights]
    prefix = f"/{settings['repo_id']}/resolve/{settings['revision']}"
    files = {f"{prefix}/{p.name}": p.read_bytes() for p in snapshot_dir(hf_home, encoder, weights).iterdir()}
    log: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> bytes | None:
            log.append(f"{self.command} {self.path}")
            data = files.get(self.path)
            self.send_response(200 if data is not None else 404)
            if data is not None:
                self.send_header("X-Repo-Commit", settings["revision"])
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            return data

        def do_GET(self) -> None:
            data = self.do_HEAD()
            if data is not None:
                self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", log
    finally:
        server.shutdown()
        server.server_close()
