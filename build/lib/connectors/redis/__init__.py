"""Redis: the availability cache (a Lua compare-and-set per batch) and its reads."""
