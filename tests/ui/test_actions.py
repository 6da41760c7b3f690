"""The functions behind the page, against the real server: the SDK's answers, and a sentence for every error."""

from __future__ import annotations

import io

import pytest

from captioning.ui import actions

pytestmark = pytest.mark.integration


def test_captions_equal_the_servers_own_answers(server, flickr_images):
    from captioning.client import CaptionClient

    path = str(flickr_images[3])
    with CaptionClient(server.grpc_url) as client:
        expected = client.caption(path)
    english, arabic, took, message = actions.caption_image(server.grpc_url, path, "Both")
    assert (english, arabic, message) == (expected.english, expected.arabic, "") and took.endswith(" s")
    assert actions.caption_image(server.grpc_url, path, "English")[:2] == (expected.english, "")
    assert actions.caption_image(server.grpc_url, path, "Arabic")[:2] == ("", expected.arabic)
    settings = actions.Settings(caption_num_beams=3)
    with CaptionClient(server.grpc_url) as client:
        beamed = client.caption(path, options=settings.options())
    assert actions.caption_image(server.grpc_url, path, "Both", settings)[:2] == (
        beamed.english,
        beamed.arabic,
    )


def test_translation_and_batch(server, flickr_images):
    from captioning.client import CaptionClient

    with CaptionClient(server.grpc_url) as client:
        expected = client.translate("a dog runs on the beach")
    assert actions.translate_text(server.grpc_url, "a dog runs on the beach")[0] == expected
    assert actions.translate_text(server.grpc_url, "   ")[2] == "Type some English text first."
    rows, csv_path, message = actions.caption_many(server.grpc_url, [str(p) for p in flickr_images[:3]])
    assert len(rows) == 3 and message == "" and all(r[1] for r in rows)
    with open(csv_path, encoding="utf-8") as f:
        assert f.read().count("\n") == 4  # header + 3 rows


def test_errors_read_as_sentences(server, tmp_path):
    from PIL import Image

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert actions.caption_image(server.grpc_url, str(broken), "Both")[3].startswith(
        "The request was refused:"
    )
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    (tmp_path / "x.gif").write_bytes(gif.getvalue())
    assert "not supported" in actions.caption_image(server.grpc_url, str(tmp_path / "x.gif"), "Both")[3]
    out_of_range = actions.Settings(caption_num_beams=99)
    image = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(image)
    assert (
        "caption_num_beams must be in 1..8"
        in actions.caption_image(server.grpc_url, str(image), "Both", out_of_range)[3]
    )
    assert "cannot be reached" in actions.caption_image("localhost:1", str(image), "Both")[3]
    assert actions.caption_image(server.grpc_url, None, "Both")[3] == "Choose an image first."
    rows, _, message = actions.caption_many(server.grpc_url, [str(image), str(broken)])
    assert message == "1 of 2 images failed." and rows[1][3].startswith("The request was refused")
