"""The original app's pipeline, as `generate()` runs it: the reference `bench` times and `verify` checks against.

Per request: decode the image, BLIP processor, `blip.generate`, decode, tokenise, `mbart.generate` with the
target language forced, decode. On a CPU or a GPU (`device`), one request at a time.
"""

from __future__ import annotations

import io
from pathlib import Path

from captioning import contract


class OriginalPipeline:
    def __init__(
        self,
        captioner: str | Path,
        translator: str | Path,
        caption_kw: dict,
        translate_kw: dict,
        device: str = "cpu",
        revisions: tuple[str | None, str | None] = (None, None),
    ) -> None:
        """`revisions`: the hub revisions of the captioner and the translator (None: the default branch; local
        directories ignore them), as `captioning export --captioner-revision/--translator-revision` took."""
        import torch
        from transformers import (
            AutoTokenizer,
            BlipForConditionalGeneration,
            BlipProcessor,
            MBartForConditionalGeneration,
        )

        from captioning.runtime.tokenization import spm_protobuf_compat

        if device == "cpu":
            pass
        elif not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device")
        else:
            from captioning.runtime.torch_runner import exact_math

            exact_math()  # generate() in fp32 without TF32, as the exact mode's tokens are defined
        self.device = torch.device(device)
        blip_rev, mbart_rev = revisions
        self.processor = BlipProcessor.from_pretrained(str(captioner), revision=blip_rev)
        blip = BlipForConditionalGeneration.from_pretrained(str(captioner), revision=blip_rev)
        self.blip = blip.eval().to(self.device)
        with spm_protobuf_compat():
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(translator), revision=mbart_rev, src_lang=contract.SOURCE_LANG
            )
        mbart = MBartForConditionalGeneration.from_pretrained(str(translator), revision=mbart_rev)
        self.mbart = mbart.eval().to(self.device)
        target = self.tokenizer.convert_tokens_to_ids(contract.TARGET_LANG)
        self.caption_kw = {k: v for k, v in caption_kw.items() if v is not None}
        self.translate_kw = {
            "forced_bos_token_id": target,
            **{k: v for k, v in translate_kw.items() if v is not None},
        }

    def caption_ids(self, data: bytes):
        import torch
        from PIL import Image

        with torch.inference_mode():
            pixels = self.processor(images=Image.open(io.BytesIO(data)), return_tensors="pt").pixel_values
            return self.blip.generate(pixel_values=pixels.to(self.device), **self.caption_kw)

    def translation_ids(self, text: str):
        import torch

        with torch.inference_mode():
            source = self.tokenizer(text, return_tensors="pt").to(self.device)
            return self.mbart.generate(**source, **self.translate_kw)

    def caption(self, data: bytes) -> str:
        return self.processor.decode(self.caption_ids(data)[0], skip_special_tokens=True)

    def translate(self, text: str) -> str:
        return self.tokenizer.decode(self.translation_ids(text)[0], skip_special_tokens=True)
