"""Built-in search strategies, one module each; importing this package registers them."""

from search.strategies import (  # noqa: F401
    beam,
    beam_wc,
    best_of_n,
    confidence,
    density,
    dts,
    fk,
    importance,
    random_pick,
    tts_var,
    value,
)
