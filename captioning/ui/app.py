"""The Gradio page: a thin layer over `captioning.ui.actions` (which go through the client SDK).

Three tabs, as the original app plus what its users asked for: caption one image (English, Arabic or both, with
the advanced generation settings the server accepts), translate English text, caption a batch (table and CSV).
Analytics are off, fonts are the system's (no font or script is fetched from outside), and `share` is never on.
A page on a non-loopback address needs a login (`auth`) unless `no_auth` says otherwise, loudly.
"""

from __future__ import annotations

import os
import sys

from captioning import contract
from captioning.client import Transport
from captioning.ui import actions
from captioning.ui.access import Credentials, check_exposure

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Arabic needs a font that has the glyphs; these ship with common systems (Debian: fonts-dejavu, fonts-noto).
CSS = """
.rtl textarea { direction: rtl; text-align: right;
  font-family: "Noto Naskh Arabic", "Noto Sans Arabic", "DejaVu Sans", "Arial", sans-serif; font-size: 1.15em; }
"""


def _settings_controls(gr):
    with gr.Accordion("Advanced settings", open=False):
        beams = gr.Slider(1, contract.MAX_BEAMS, step=1, value=3, label="Caption beams")
        tokens = gr.Slider(
            1, actions.MAX_NEW_TOKENS, step=1, value=actions.MAX_NEW_TOKENS, label="Caption max new tokens"
        )
        t_beams = gr.Slider(1, contract.MAX_BEAMS, step=1, value=5, label="Translation beams")
        t_tokens = gr.Slider(
            1,
            actions.MAX_NEW_TOKENS,
            step=1,
            value=actions.MAX_NEW_TOKENS,
            label="Translation max new tokens",
        )
    return [beams, tokens, t_beams, t_tokens]


def _image_input(gr, **kwargs):
    """An image input that hands the server whatever was uploaded: Gradio's own decoding would refuse an
    unreadable file with a bare "Error", where the server names the problem (and the page shows its words).
    The instance's `preprocess` is wrapped rather than subclassed: Gradio writes a stub file for subclasses."""
    image = gr.Image(**kwargs)
    strict = image.preprocess

    def lenient(payload):
        try:
            return strict(payload)
        except Exception:
            return getattr(payload, "path", None)

    image.preprocess = lenient
    return image


def build(url: str, transport: Transport | None = None):
    """The page, bound to the server at `url`, reached with `transport` (TLS, headers)."""
    import gradio as gr

    with gr.Blocks(title="Bilingual image captioning", analytics_enabled=False) as page:
        gr.Markdown(
            f"# Bilingual image captioning\nEnglish captions from BLIP, Arabic from mBART-50, served by `{url}`."
        )
        with gr.Tab("Caption"):
            controls = _caption_tab(gr, url, transport)
        with gr.Tab("Translate"):
            _translate_tab(gr, url, transport, controls)
        with gr.Tab("Batch"):
            _batch_tab(gr, url, transport, controls)
    return page


def _caption_tab(gr, url: str, transport: Transport | None) -> list:
    with gr.Row():
        with gr.Column():
            image = _image_input(
                gr,
                type="filepath",
                sources=["upload", "clipboard", "webcam"],
                label="Image",
                elem_id="image-input",
            )
            lang = gr.Radio(list(actions.LANGS), value="Both", label="Output language", elem_id="lang")
            controls = _settings_controls(gr)
            button = gr.Button("Caption", variant="primary", elem_id="caption-button")
        with gr.Column():
            english = gr.Textbox(label="English", interactive=False, elem_id="caption-en")
            arabic = gr.Textbox(
                label="العربية (Arabic)",
                interactive=False,
                rtl=True,
                elem_id="caption-ar",
                elem_classes=["rtl"],
            )
            took = gr.Textbox(label="Time", interactive=False, elem_id="caption-time")
            message = gr.Markdown(elem_id="caption-message")
    examples = actions.example_images()
    if examples:
        gr.Examples(examples=examples, inputs=[image], label="Flickr8k examples")
    button.click(
        lambda img, lg, *s: actions.caption_image(url, img, lg, actions.Settings(*s), transport=transport),
        inputs=[image, lang, *controls],
        outputs=[english, arabic, took, message],
    )
    return controls


def _translate_tab(gr, url: str, transport: Transport | None, controls: list) -> None:
    text = gr.Textbox(label="English text", lines=3, elem_id="text-input")
    button = gr.Button("Translate", variant="primary", elem_id="translate-button")
    out = gr.Textbox(
        label="العربية (Arabic)", interactive=False, rtl=True, elem_id="translation", elem_classes=["rtl"]
    )
    took = gr.Textbox(label="Time", interactive=False)
    message = gr.Markdown(elem_id="translate-message")
    button.click(
        lambda t, *s: actions.translate_text(url, t, actions.Settings(None, None, *s), transport=transport),
        inputs=[text, *controls[2:]],
        outputs=[out, took, message],
    )


def _batch_tab(gr, url: str, transport: Transport | None, controls: list) -> None:
    files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="batch-input")
    button = gr.Button("Caption all", variant="primary", elem_id="batch-button")
    table = gr.Dataframe(
        headers=["image", "english", "arabic", "time or error"], interactive=False, elem_id="batch-table"
    )
    download = gr.File(label="CSV", elem_id="batch-csv")
    message = gr.Markdown()
    button.click(
        lambda fs, *s: actions.caption_many(url, fs, actions.Settings(*s), transport=transport),
        inputs=[files, *controls],
        outputs=[table, download, message],
    )


def launch(
    url: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    *,
    transport: Transport | None = None,
    auth: Credentials | None = None,
    no_auth: bool = False,
):
    """Serve the page on loopback by default; never through Gradio's share tunnel. `auth`: the
    (user, password) pairs of Gradio's login. Elsewhere than loopback the page needs `auth`, or `no_auth`
    (which prints a warning): `captioning.ui.access.AccessError` otherwise, before any port is opened."""
    warning = check_exposure(host, port, auth, no_auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    import gradio as gr

    page = build(url, transport)
    theme = gr.themes.Default(
        font=["system-ui", "sans-serif"], font_mono=["monospace"]
    )  # no web fonts fetched
    page.queue(default_concurrency_limit=16)
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        auth=list(auth) if auth else None,
        auth_message="Bilingual image captioning: log in to use the page." if auth else None,
        inbrowser=False,
        prevent_thread_lock=not block,
        show_error=False,
        theme=theme,
        css=CSS,
        footer_links=[],
        ssr_mode=False,
        allowed_paths=[str(p) for p in {os.path.dirname(e) for e in actions.example_images()}],
    )
    return page
