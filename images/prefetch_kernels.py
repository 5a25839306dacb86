"""Fetch hub kernels into the trainer image's Hugging Face cache at build time (sandboxes have no network).

    HF_HOME=/opt/hf python images/prefetch_kernels.py REPO...

``kernels.get_kernel`` downloads the build of each repo that matches this torch and loads it. Loading needs a GPU
on some builds, and an image is often built on a machine without one, so a load that fails after the download is
fine: what matters is that the repo is in the cache, and at run time ``HF_HUB_OFFLINE=1`` makes ``get_kernel``
resolve it from there. A repo that is not in the cache afterwards fails the build, with the reason.
"""

from __future__ import annotations

import sys


def main(repos: list[str]) -> int:
    from huggingface_hub import scan_cache_dir
    from kernels import get_kernel

    for repo in repos:
        try:
            get_kernel(repo)
            print(f"[kernels] {repo}: fetched and loaded", flush=True)
        except Exception as exc:  # no GPU in the build: the download is what counts
            print(f"[kernels] {repo}: fetched? load failed here ({type(exc).__name__}: {exc})", flush=True)
    cached = {r.repo_id for r in scan_cache_dir().repos}
    missing = [r for r in repos if r not in cached]
    if missing:
        print(f"[kernels] not in the cache after the fetch: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
