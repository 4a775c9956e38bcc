"""From photographs to training shards: sources and the corpus, fetch, augment, CIE Lab, shards."""
