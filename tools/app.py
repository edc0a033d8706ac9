#!/usr/bin/env python
"""The web page: upload a video, see its top-5 classes as bars, the windows' timeline and a caption.

    python tools/app.py --model runs/demo/finetune [--captioner runs/demo/caption] [--port 7860]
    make app        # after `make demo`: the demo's finetuned S5 and its GPT-2 captioner

``--model`` / ``--captioner``: a ``tools/export.py`` file, or a finished run directory (exported
to ``<run>/export/model.safetensors`` first, again when the run's results are newer). The answers
are :func:`tools.predict.answer_video`'s - the page and ``tools/predict.py --json`` agree by
construction; the page also shows that JSON. A file that cannot be decoded is an error message on
the page; the server keeps serving. Built with gradio (``gr.Blocks``); no analytics, nothing is
fetched from the network.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: import s5video from it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def exported(path: str) -> str:
    """A .safetensors export as is; a run directory -> its export (written when missing or stale).
    Raises FileNotFoundError (no such file or run) or SystemExit from tools/export.py."""
    p = Path(path)
    if p.is_file():
        return str(p)
    if not (p / "config.yaml").exists():
        raise FileNotFoundError(f"{path}: neither an export (.safetensors) nor a run directory (config.yaml); "
                                "run `make demo` first or give --model FILE")
    out = p / "export" / "model.safetensors"
    results = p / "results.json"
    if not out.exists() or (results.exists() and results.stat().st_mtime > out.stat().st_mtime):
        from s5video.tools.export import main as export_main
        out.parent.mkdir(exist_ok=True)
        if export_main([str(p), "--out", str(out)]) != 0:
            raise FileNotFoundError(f"{path}: export failed")
    return str(out)


def build_app(model, captioner=None, threshold: float = 0.5):
    """The gradio page of ``model`` (and ``captioner``): an upload, a stride box, a Predict button;
    outputs (elem ids) ``top5`` (bars), ``timeline`` (one row per window), ``caption``, ``answer_json``."""
    import gradio as gr
    import torch

    from s5video.tools.predict import answer_video

    names = model.classes or []
    clip_s = model.config["data"]["clip_seconds"]

    def predict(file, stride):
        if not file:
            raise gr.Error("upload a video first")
        path = file if isinstance(file, str) else file.name
        try:
            out = answer_video(model, captioner, path, float(stride) if stride else None, threshold)
        except (OSError, ValueError) as e:
            raise gr.Error(f"{Path(path).name}: {e}") from None
        bars, rows = {}, []
        if model.task in ("classification", "multilabel"):
            s = torch.tensor(out["scores"])
            bars = {names[i] if i < len(names) else str(i): float(s[i]) for i in s.topk(min(5, len(s))).indices.tolist()}
            for w in out["windows"]:
                ws = torch.tensor(w["scores"])
                k = int(ws.argmax())
                rows.append([w["start_s"], w["end_s"], names[k] if k < len(names) else str(k), round(float(ws[k]), 4),
                             w.get("caption", "")])
        else:
            rows = [[w["start_s"], w["end_s"], "", float("nan"), w.get("caption", "")] for w in out["windows"]]
        shown = {k: out[k] for k in ("task", "duration_s", "answer", "caption") if k in out}
        return path, bars, rows, out.get("caption", ""), json.dumps(shown, indent=1)

    title = f"s5video: {model.config['model']['name']} ({len(names)} classes)"
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\nUpload a video: top-5 classes over its {clip_s:g}-s windows"
                    + (", a caption" if captioner is not None or model.task == "captioning" else "") + ".")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="video", file_types=["video"], type="filepath", elem_id="upload")
                stride = gr.Number(value=0, minimum=0, label=f"window stride, seconds (0: {clip_s:g}, the window "
                                   "length - no overlap; less overlaps)", elem_id="stride")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
                player = gr.Video(label="the video", interactive=False, elem_id="player")
            with gr.Column():
                top5 = gr.Label(num_top_classes=5, label="top-5 classes", elem_id="top5")
                caption = gr.Textbox(label="caption", interactive=False, elem_id="caption",
                                     visible=captioner is not None or model.task == "captioning")
                timeline = gr.Dataframe(headers=["start s", "end s", "top class", "prob", "caption"],
                                        label="windows", interactive=False, elem_id="timeline")
                answer = gr.Textbox(label="answer (as tools/predict.py --json)", lines=8, interactive=False,
                                    elem_id="answer_json")
        button.click(predict, [upload, stride], [player, top5, timeline, caption, answer])
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an export (.safetensors) or a finished run directory")
    ap.add_argument("--captioner", default=None, help="a captioning export or run directory (optional; "
                    "skipped with a note when the path does not exist)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--threshold", type=float, default=0.5, help="multi-label: classes at or above this")
    a = ap.parse_args(argv)
    import torch

    from s5video.models.exported import load_exported
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = load_exported(exported(a.model), None, device)
        captioner = None
        if a.captioner and Path(a.captioner).exists():
            captioner = load_exported(exported(a.captioner), None, device)
        elif a.captioner:
            print(f"app.py: no captioner at {a.captioner}; serving without captions", file=sys.stderr)
    except (OSError, ValueError) as e:
        ap.exit(2, f"app.py: error: {e}\n")
    if captioner is not None and captioner.task != "captioning":
        ap.exit(2, f"app.py: error: --captioner: {a.captioner} is a {captioner.task} model\n")
    print(f"serving {a.model}" + (f" + {a.captioner}" if captioner else "") + f" on http://{a.host}:{a.port}",
          flush=True)
    build_app(model, captioner, a.threshold).launch(server_name=a.host, server_port=a.port, share=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
