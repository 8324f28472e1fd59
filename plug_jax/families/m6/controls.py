"""Does a trained M6 read the picture? Image-to-text next to a blank-picture control.

For an image-to-text experiment (``experiments/m6/shop_title_tiny.gin``, or its description
variant) it decodes greedy texts for the split's pictures and for as many blank ones, and
prints corpus CIDEr-D and BLEU-4 against the references and the share of texts that name the
product's category and colour as the reference does (a title states both; the brand, style
and season it also states are not in the picture). A model that reads the picture beats the
blank control on all of them. Run it as a module::

    python -m plug_jax.families.m6.controls --gin_file=experiments/m6/shop_title_tiny.gin \\
        --gin.MODEL_DIR=/tmp/m6_title [--split test]
"""
from __future__ import annotations

from plug_jax.metrics.controls import (captions_with_controls, format_caption_controls,
                                       load_checkpoint)


def attribute_names(lang: str) -> dict[str, list[str]]:
    """``{'category': [...], 'colour': [...]}``: Shop World's names in ``lang``."""
    from plug_jax.data.shop_world import world
    return {"category": [getattr(c.name, lang) for c in world.CATEGORIES],
            "colour": [getattr(c.name, lang) for c in world.COLOURS]}


def main(argv=None) -> int:
    model, params, data, split = load_checkpoint(argv, __doc__.split("\n\n")[0])
    lang = "zh" if "_zh_" in data.mixture_or_task_name else "en"
    res = captions_with_controls(model, params, data, split=split, lang=lang,
                                 max_new_tokens=int(data.task_feature_lengths["targets"]),
                                 attributes=attribute_names(lang))
    print(format_caption_controls(res, split), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
