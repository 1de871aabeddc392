// nn/ layer tests: added with the layers.
