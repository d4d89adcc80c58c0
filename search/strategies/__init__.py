"""Built-in search strategies, one module each; importing this package registers them."""

from search.strategies import beam, best_of_n, fk, importance, random_pick, tts_var  # noqa: F401
