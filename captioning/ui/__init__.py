"""The web UI: the original app's Gradio page, as a client of a running server (never loading the models)."""
