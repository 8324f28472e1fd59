"""Shop World knowledge triples aligned to the description spans that state them.

Kind ``triples``: one ``(subject, relation, object)`` per relation in ``RELATIONS``, where the
subject is the product id, the object is the exact substring of the product's description
(or, failing that, its title) that states the attribute, and ``start``/``end`` are character
offsets into that text (``text[start:end] == object`` is asserted when generating). The span is
looked up first inside the description sentence whose discourse slot states the attribute (so
the colour is aligned to the intro sentence, the price to the closing sentence ...), which
keeps alignments precise when a word occurs twice. ``object_key`` is the record's value.
"""
from __future__ import annotations

import numpy as np

from plug_jax.data.shop_world import spans, text, world
from plug_jax.data.shop_world.world import Product, check_lang

# relation -> (product field, description slot that states it)
RELATION_SPECS = {
    "is_a": ("category", "intro"),
    "made_by": ("brand", "intro"),
    "has_colour": ("colour", "intro"),
    "has_material": ("material", "material"),
    "has_style": ("style", "intro"),
    "suitable_for": ("audience", "audience"),
    "has_size": ("size", "audience"),
    "for_season": ("season", "use"),
    "price": ("price", "closing"),
}
RELATIONS = tuple(RELATION_SPECS)


def object_surfaces(p: Product, relation: str, lang: str) -> tuple[str, ...]:
    """Surface forms that may state ``relation``'s object for ``p``, most specific first."""
    check_lang(lang)
    field = RELATION_SPECS[relation][0]
    if field == "price":
        return (f"{p.price}元",) if lang == "zh" else (f"¥{p.price}",)
    if field == "season":
        s = world.SEASON_BY_KEY[p.season]
        return (s.long.get(lang), s.name.get(lang), s.title.get(lang))
    if field == "size":
        return (p.size_info.short.get(lang), p.size_info.clause.get(lang))
    return (p.names(lang)[field],)


def product_triples(p: Product, lang: str) -> dict:
    """Triples of ``p`` in ``lang`` with their spans (see the module docstring)."""
    desc = spans.description_of(p, lang)
    description = desc["description"]
    title = spans.title_of(p, lang)
    ranges = spans.sentence_offsets(desc, lang)
    ignore_case = lang != "zh"
    taken: list[tuple[int, int]] = []
    out = []
    for relation, (field, slot) in RELATION_SPECS.items():
        found = None
        lo, hi = ranges.get(slot, (0, len(description)))
        # the stating sentence, then the whole description, then the title
        for source, hay, a, b in (("description", description, lo, hi),
                                  ("description", description, 0, len(description)),
                                  ("title", title, 0, len(title))):
            for surface in object_surfaces(p, relation, lang):
                span = spans.find_span(hay, surface, lang, a, b,
                                       tuple(taken) if source == "description" else (),
                                       ignore_case=ignore_case)
                if span is not None:
                    found = (source, hay, span)
                    break
            if found:
                break
        if found is None:  # pragma: no cover  (every template states every attribute)
            raise AssertionError(f"{p.product_id}: no span states {relation} in {lang}")
        source, hay, (s, e) = found
        if source == "description":
            taken.append((s, e))
        obj = hay[s:e]
        assert hay[s:e] == obj and obj.lower() in {x.lower() for x in
                                                   object_surfaces(p, relation, lang)}
        out.append({"subject": p.product_id, "relation": relation, "object": obj,
                    "object_key": getattr(p, field), "source": source, "start": s, "end": e})
    return {"triples": tuple(out), "triples_text": description, "triples_title": title}


@text.register_kind("triples")
def triples_kind(p: Product, rng: np.random.Generator, lang: str) -> dict:
    del rng  # fully determined by the description and title
    return product_triples(p, lang)
