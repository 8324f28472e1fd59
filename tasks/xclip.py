"""X-CLIP tasks on Shop World videos: video-text retrieval pairs.

``xclip_shop_video_retrieval_en_v1``: ``shop_world/videos_8``, one example per video:
``frames`` (float32 ``[8, 64, 64, 3]``, CLIP-normalised pixels) and ``targets`` (the English
caption, which states the order of the events, tokenized with the Shop World SentencePiece
vocabulary, ending in EOS = 1, the token the text tower pools). Feature converter
``video_text``; ``TASK_FEATURE_LENGTHS = {'frames': (8, 64, 64, 3), 'targets': 64}``.

The caption length must equal the model's ``num_words`` (its word matrices are that size);
the feature converter pads every caption to ``TASK_FEATURE_LENGTHS['targets']``.
"""
from __future__ import annotations

from . import clip as _clip

VIDEO_RETRIEVAL_EN = "xclip_shop_video_retrieval_en_v1"
_clip.register_caption_task(VIDEO_RETRIEVAL_EN, "en", "videos_8")
