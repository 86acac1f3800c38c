"""The demo's curated source: the docstrings of the installed Python standard library, as JSON Lines.

Every machine that runs Crucible has them, so ``crucible demo`` can show a two-source mixture (the crawled pydoc
pages plus this curated text) with nothing downloaded. One document per module, class or function whose docstring
has at least ``MIN_CHARS`` characters: ``{"id": "json.JSONDecoder", "module": "json", "kind": "class", "url":
"http://127.0.0.1:8765/json.html#JSONDecoder", "text": "..."}``. Modules are imported in a child process
(``python -m flows.demo_data OUT``), so the importing never touches the orchestrator; the file is written
atomically and sorted, so the same Python gives the same bytes.
"""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path

MIN_CHARS = 200
# Modules that do things when imported (open a browser, print, need a display) or only hold packaging data.
SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
        "test", "xxsubtype", "xxlimited", "__phello__", "msvcrt", "winreg", "winsound", "_")


def docstrings(base_url: str = "http://127.0.0.1:8765") -> list[dict[str, str]]:
    import importlib

    docs: dict[str, dict[str, str]] = {}
    for name in sorted(sys.stdlib_module_names):
        if name.startswith(SKIP):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except BaseException:  # not on this platform, or needs what is not installed
            continue
        items = [(name, "module", module)]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                items.append((f"{name}.{attr}", "class" if inspect.isclass(obj) else "function", obj))
        for ident, kind, obj in items:
            doc = inspect.getdoc(obj) if kind != "module" else obj.__doc__
            if not isinstance(doc, str) or len(doc.strip()) < MIN_CHARS:
                continue
            anchor = "" if kind == "module" else f"#{ident.rsplit('.', 1)[1]}"
            docs[ident] = {"id": ident, "module": name, "kind": kind, "url": f"{base_url}/{name}.html{anchor}",
                           "text": f"{ident}\n\n{inspect.cleandoc(doc)}"}
    return [docs[k] for k in sorted(docs)]


def write_docstrings(path: Path, base_url: str = "http://127.0.0.1:8765") -> Path:
    """Write the standard library's docstrings to ``path`` (JSON Lines), in a child process; returns the path."""
    path = Path(path)
    if not path.is_file():
        done = subprocess.run([sys.executable, "-m", "flows.demo_data", str(path), base_url], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0 or not path.is_file():
            raise RuntimeError(f"could not write the standard library's docstrings to {path}: "
                               f"{done.stderr.strip()[-1000:] or f'exit code {done.returncode}'}")
    return path


def main() -> None:
    from tasks.atomic import atomic_write_bytes

    out, base_url = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8765"
    lines = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docstrings(base_url))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lines.encode("utf-8"))


if __name__ == "__main__":
    main()
