"""The benchmark's own shop: the same rows for every contender, isolated from testproject."""
