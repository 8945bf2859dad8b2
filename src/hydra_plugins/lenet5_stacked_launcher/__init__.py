"""`hydra/launcher=stacked`: a multirun's stackable jobs trained as stacked models, several per process."""
